//! Paging of lists: the `limit` parameter and the opaque `next` cursor.
//!
//! A cursor is base64url of `KIND:VALUE` (the last item's sort key on the page); the kind
//! keeps a cursor of one list from being used on another. Clients treat it as opaque.
//!
//! Owns: encoding and checking cursors and limits. Must not: read anything.

use base64::Engine;
use serde::Deserialize;

use crate::error::{ApiError, ApiResult};

/// The query of a plain paged list: `limit` and `next`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<String>,
    pub next: Option<String>,
}

/// The default page size and the largest one.
pub(super) const DEFAULT_LIMIT: usize = 100;
pub(super) const MAX_LIMIT: usize = 1000;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The cursor after `value` in the list `kind`.
pub(super) fn encode(kind: &str, value: &str) -> String {
    B64.encode(format!("{kind}:{value}"))
}

/// The value of a cursor of list `kind`.
pub(super) fn decode(kind: &str, cursor: &str) -> ApiResult<String> {
    let bad = || ApiError::bad_request("next is not a cursor of this list");
    let raw = B64.decode(cursor.trim()).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let value = text.strip_prefix(kind).and_then(|r| r.strip_prefix(':'));
    value.map(str::to_owned).ok_or_else(bad)
}

/// The page size: `limit` (1 to 1000) or the default.
pub(super) fn limit(limit: Option<&str>) -> ApiResult<usize> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => match s.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "limit must be 1 to {MAX_LIMIT}"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_belong_to_one_list() {
        let c = encode("hosts", "edge-1:a/b");
        assert_eq!(decode("hosts", &c).unwrap(), "edge-1:a/b");
        assert!(decode("bulk", &c).is_err());
        assert!(decode("hosts", "!!").is_err());
        assert_eq!(limit(None).unwrap(), 100);
        assert_eq!(limit(Some("1000")).unwrap(), 1000);
        for bad in ["0", "1001", "-1", "x"] {
            assert!(limit(Some(bad)).is_err(), "{bad}");
        }
    }
}
