//! The admin CLI's HTTP client: one service URL and API key, JSON in and
//! out, and every problem+json answer turned into an error carrying its
//! `detail` (the CLI prints it and exits non-zero).

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The service answered with a problem: its status, `code` and `detail`.
    #[error("{status} {code}: {detail}")]
    Problem {
        status: u16,
        code: String,
        detail: String,
    },
    #[error("cannot reach {url}: {source}")]
    Connect { url: String, source: reqwest::Error },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The service the CLI talks to.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    key: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, key: Option<String>) -> Result<Self, CliError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| CliError::Usage(format!("HTTP client: {e}")))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            key: key.filter(|k| !k.is_empty()),
            http,
        })
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    /// Sends `rb`; a non-2xx answer becomes [`CliError::Problem`].
    pub async fn send(&self, rb: RequestBuilder) -> Result<Response, CliError> {
        let res = rb.send().await.map_err(|e| CliError::Connect {
            url: self.base.clone(),
            source: e,
        })?;
        if res.status().is_success() {
            return Ok(res);
        }
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        let text = |f: &str| body[f].as_str().map(str::to_owned);
        let mut detail = text("detail")
            .or_else(|| text("title"))
            .unwrap_or_else(|| "no detail".into());
        if let Some(errors) = body["errors"].as_array() {
            for e in errors {
                detail.push_str(&format!(
                    "; {}: {}",
                    e["field"].as_str().unwrap_or("?"),
                    e["message"].as_str().unwrap_or("?")
                ));
            }
        }
        Err(CliError::Problem {
            status,
            code: text("code").unwrap_or_else(|| "error".into()),
            detail,
        })
    }

    /// A JSON request and its JSON answer.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let mut rb = self.request(method, path);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let res = self.send(rb).await?;
        Ok(res.json().await.unwrap_or(Value::Null))
    }
}
