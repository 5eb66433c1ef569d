//! Range checks for request fields (422 naming the field).

use serde::Deserialize;

use super::errors::ApiError;

/// `stop` may be one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    /// One stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

/// Most stop strings per request.
pub const MAX_STOPS: usize = 16;

impl StopField {
    /// Validated list.
    pub fn into_vec(self, param: &str) -> Result<Vec<String>, ApiError> {
        let v = match self {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        };
        if v.len() > MAX_STOPS {
            return Err(ApiError::invalid_field(
                param,
                format!(
                    "`{param}` has {} entries; at most {MAX_STOPS} are allowed",
                    v.len()
                ),
            ));
        }
        if v.iter().any(|s| s.len() > 256) {
            return Err(ApiError::invalid_field(
                param,
                format!("`{param}` entries must be at most 256 bytes"),
            ));
        }
        Ok(v.into_iter().filter(|s| !s.is_empty()).collect())
    }
}

/// `value` must be finite and within `[lo, hi]`.
pub fn range_f32(param: &str, value: Option<f32>, lo: f32, hi: f32) -> Result<(), ApiError> {
    match value {
        Some(v) if !v.is_finite() || v < lo || v > hi => Err(ApiError::invalid_field(
            param,
            format!("`{param}` must be between {lo} and {hi}, got {v}"),
        )),
        _ => Ok(()),
    }
}

/// `value` must be finite and within `(lo, hi]`.
pub fn range_f32_open_low(
    param: &str,
    value: Option<f32>,
    lo: f32,
    hi: f32,
) -> Result<(), ApiError> {
    match value {
        Some(v) if !v.is_finite() || v <= lo || v > hi => Err(ApiError::invalid_field(
            param,
            format!("`{param}` must be greater than {lo} and at most {hi}, got {v}"),
        )),
        _ => Ok(()),
    }
}

/// A token budget must be at least 1.
pub fn positive(param: &str, value: u32) -> Result<(), ApiError> {
    if value == 0 {
        return Err(ApiError::invalid_field(
            param,
            format!("`{param}` must be at least 1"),
        ));
    }
    Ok(())
}

/// `top_k` must not be negative.
pub fn top_k(param: &str, value: Option<i32>) -> Result<(), ApiError> {
    match value {
        Some(v) if v < 0 => Err(ApiError::invalid_field(
            param,
            format!("`{param}` must be 0 (off) or positive, got {v}"),
        )),
        _ => Ok(()),
    }
}
