//! Field-level validation errors, rendered by the HTTP layer as the
//! `errors: [{field, message}]` list of a `422 invalid_request`.

use serde::Serialize;

/// One field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// JSON path of the field, e.g. `coupon.amount_off`.
    pub field: String,
    /// What is wrong with it, in words a developer can act on.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Accumulates field errors so a client sees every problem at once.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<FieldError>);

impl Errors {
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    /// `Ok(value)` when nothing was pushed.
    pub fn finish<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }
}

/// True for text made only of visible ASCII (no spaces, no control characters):
/// the alphabet of device ids, order ids and store ids.
pub fn is_visible_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}
