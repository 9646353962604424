//! `POST /v1/campaigns/{id}/codes`: the request (the answer is CSV).

use serde::Deserialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::service::bulk::BulkCommand;

/// How many pre-issued codes to reserve and stream.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkCodesRequest {
    /// Codes to reserve against stock, one serial range; bound to no one,
    /// each redeems once.
    #[schema(required = true, example = 1000, minimum = 1, maximum = 1000000)]
    pub count: Option<i64>,
}

impl BulkCodesRequest {
    /// The command for campaign `raw_id`: `404` for an id that names no
    /// campaign, `422` for a count outside 1..=1,000,000.
    pub fn parse(self, raw_id: &str) -> Result<BulkCommand, ApiError> {
        BulkCommand::parse(raw_id, self.count)
    }
}
