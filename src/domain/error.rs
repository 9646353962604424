//! Field-level validation errors, rendered by the HTTP layer as the
//! `errors: [{field, message}]` list of a `422 invalid_request`.

use serde::Serialize;

/// One field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// An optional or required text field of visible ASCII, at most `max` bytes.
pub fn visible_field(
    field: &str,
    v: Option<&str>,
    max: usize,
    required: bool,
    errs: &mut Errors,
) -> Option<String> {
    match v {
        None if required => {
            errs.push(field, "is required");
            None
        }
        None => None,
        Some(s) if s.is_empty() || s.len() > max || !is_visible_ascii(s) => {
            errs.push(
                field,
                format!("must be 1 to {max} visible ASCII characters"),
            );
            None
        }
        Some(s) => Some(s.to_owned()),
    }
}

/// An amount of money in minor units, `0..=MAX_MONEY`.
pub fn amount_field(field: &str, v: Option<i64>, errs: &mut Errors) -> Option<i64> {
    match v {
        Some(a) if !(0..=crate::domain::campaign::MAX_MONEY).contains(&a) => {
            errs.push(field, "must be between 0 and 1000000000000 (minor units)");
            None
        }
        a => a,
    }
}
