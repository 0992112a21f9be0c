//! How deeply JSON text nests, found without parsing it: the one check made before a parser
//! whose depth must be bounded (the agent's policy reader of Docker bodies; the server's
//! one-pass message decoder, which skips ignored members without a limit of its own).
//!
//! Owns: the scan. Must not: validate the JSON (the parser after it does).

/// The byte offset at which `bytes` first nest more than `max` levels of arrays and objects
/// (brackets inside strings do not count), or `None` when they never do.
pub fn deeper_than(bytes: &[u8], max: usize) -> Option<usize> {
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Some(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::deeper_than;

    #[test]
    fn counts_brackets_outside_strings() {
        assert_eq!(deeper_than(b"[[1]]", 2), None);
        assert_eq!(deeper_than(b"[[1]]", 1), Some(1));
        assert_eq!(deeper_than(br#"{"a":"[[[\"[["}"#, 1), None);
        assert_eq!(deeper_than(b"[][][]", 1), None);
        assert_eq!(deeper_than(b"]]]][[", 1), Some(5));
    }
}
