//! `Idempotency-Key` on the POSTs whose effect keeps no record of its own:
//! the lifecycle actions, admin bans, validate and ops tokens. (Claims,
//! redemptions, rollbacks, creates and bulk codes record their answer in
//! their own scripts.) API.md promises it on any POST: a retry with the
//! same key and request gets the first answer, the same key with another
//! request is `422 idempotency_key_reused`.
//!
//! [`begin`] binds the key to the request's fingerprint (the caller-scoped
//! record of `service::idempotency`) and replays a recorded answer; after
//! the use case, [`Keyed::answer`] records a success as `<status> <json>`
//! under the key. Only successes are recorded: a refused request changed
//! nothing, and its retry is decided afresh.
//!
//! Not atomic with the effect, unlike the scripts' records: if the process
//! dies between the effect and the record, the retry runs the action
//! again (a lifecycle move then answers `409 invalid_transition`, a ban
//! is started again). A retry while the first still runs also runs again.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::ContentType;
use serde::Serialize;

use crate::error::ApiError;
use crate::service::RequestContext;
use crate::startup::Services;

/// What to do with a request that may carry an `Idempotency-Key`.
#[derive(Debug)]
pub enum Begin {
    /// The key's first answer, to send as it is.
    Replay(HttpResponse),
    /// Run the use case, then answer through [`Keyed::answer`].
    Run(Keyed),
}

/// A request to run whose success is recorded under its key (if any).
#[derive(Debug)]
pub struct Keyed {
    fingerprint: Option<String>,
}

/// Binds the caller's key (if any) to `request` (its parts, scope first).
pub async fn begin(
    services: &Services,
    ctx: &RequestContext,
    request: &[&[u8]],
) -> Result<Begin, ApiError> {
    if ctx.idempotency_key.is_none() {
        return Ok(Begin::Run(Keyed { fingerprint: None }));
    }
    let fingerprint = services.idem.digest(request);
    match services
        .idem
        .own(&services.store, ctx, &fingerprint)
        .await?
    {
        Some(first) => Ok(Begin::Replay(replay(&first).ok_or(ApiError::Internal)?)),
        None => Ok(Begin::Run(Keyed {
            fingerprint: Some(fingerprint),
        })),
    }
}

impl Keyed {
    /// Renders a success, recorded first under the key (if any).
    pub async fn answer<T: Serialize>(
        self,
        services: &Services,
        ctx: &RequestContext,
        status: StatusCode,
        value: &T,
    ) -> Result<HttpResponse, ApiError> {
        let body = serde_json::to_string(value).map_err(|_| ApiError::Internal)?;
        if let Some(fp) = &self.fingerprint {
            let record = format!("{} {body}", status.as_u16());
            services
                .idem
                .remember_answer(&services.store, ctx, fp, &record)
                .await?;
        }
        Ok(HttpResponse::build(status)
            .content_type(ContentType::json())
            .body(body))
    }
}

/// A recorded `<status> <json>` as the response it was.
fn replay(record: &str) -> Option<HttpResponse> {
    let (status, body) = record.split_once(' ')?;
    let status = StatusCode::from_u16(status.parse().ok()?).ok()?;
    Some(
        HttpResponse::build(status)
            .content_type(ContentType::json())
            .body(body.to_owned()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_replays_its_status_and_body() {
        let r = replay(r#"201 {"a":"b c"}"#).unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        assert!(replay("nonsense").is_none());
        assert!(replay("99999 {}").is_none());
    }
}
