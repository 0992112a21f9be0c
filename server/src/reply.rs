//! The one JSON shape of an outcome, and the HTTP status of an error code.
//!
//! Owns: `{"status":"success","data":..}` / `{"status":"error","error":{"code","message"}}`.
//! The REST answer of an operation, the result stored with a command, and every API error use
//! this shape, and it is built and read here only. Also owns the mapping of an error code to
//! its HTTP status, where a code this build does not know (`unknown`, from a newer peer) is
//! answered like `internal`.
//! Must not: depend on anything of the server (it is a leaf every layer may use).

use axum::http::StatusCode;
use protocol::{ErrorBody, ErrorCode};
use serde_json::{json, Value};

/// What an operation came to: its data, or an error with a stable code.
pub type Outcome = Result<Value, ErrorBody>;

/// The document of an outcome.
pub fn encode(outcome: &Outcome) -> Value {
    match outcome {
        Ok(data) => json!({ "status": "success", "data": data }),
        Err(e) => error_doc(e),
    }
}

/// The document of an outcome as it is written (a response body, a stored result): the same
/// JSON as [`encode`] without building a copy of the data first.
pub struct Doc<'a>(pub &'a Outcome);

impl serde::Serialize for Doc<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2))?;
        // `encode`'s object keeps its keys sorted: `data` or `error` comes before `status`.
        match self.0 {
            Ok(data) => {
                m.serialize_entry("data", data)?;
                m.serialize_entry("status", "success")?;
            }
            Err(e) => {
                m.serialize_entry("error", e)?;
                m.serialize_entry("status", "error")?;
            }
        }
        m.end()
    }
}

/// [`Doc`] as text.
pub fn encode_text(outcome: &Outcome) -> String {
    // A `Value` and an `ErrorBody` serialise infallibly (string keys only).
    serde_json::to_string(&Doc(outcome)).unwrap_or_else(|_| encode(outcome).to_string())
}

/// The document of an error: `{"status":"error","error":{..}}`.
pub fn error_doc(e: &ErrorBody) -> Value {
    json!({ "status": "error", "error": e })
}

/// Reads a document written by [`encode`]; `None` when it holds no outcome (a command that
/// has not finished stores nothing).
pub fn decode(doc: &Value) -> Option<Outcome> {
    match doc.get("status").and_then(Value::as_str) {
        Some("success") => Some(Ok(doc.get("data").cloned().unwrap_or(Value::Null))),
        Some("error") => Some(Err(doc
            .get("error")
            .cloned()
            .and_then(|e| serde_json::from_value(e).ok())
            .unwrap_or_else(|| ErrorBody::internal("unreadable stored error")))),
        _ => None,
    }
}

/// The HTTP status an error with `code` is answered with.
pub fn http_status(code: ErrorCode) -> StatusCode {
    let code = match code {
        ErrorCode::Unknown => ErrorCode::Internal,
        c => c,
    };
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_statuses() {
        let ok: Outcome = Ok(json!([1, 2]));
        assert_eq!(encode(&ok), json!({"status": "success", "data": [1, 2]}));
        assert_eq!(decode(&encode(&ok)), Some(ok.clone()));
        let err: Outcome = Err(ErrorBody::new(ErrorCode::NotFound, "No such container: x"));
        assert_eq!(encode(&err)["error"]["code"], "not_found");
        assert_eq!(decode(&encode(&err)), Some(err.clone()));
        // The written form is the same text.
        for o in [
            &ok,
            &err,
            &Ok(json!({"b": [1, {"z": null, "a": "x"}], "a": 1.5})),
        ] {
            assert_eq!(encode_text(o), encode(o).to_string());
        }
        assert_eq!(decode(&Value::Null), None);
        assert_eq!(
            http_status(ErrorCode::Unknown),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(http_status(ErrorCode::AgentOffline), StatusCode::CONFLICT);
    }
}
