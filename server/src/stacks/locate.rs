//! Where a problem's path (`services.web.build`, `services.web.ports[1]`) is in the text of a
//! compose file: the 1-based line of its key or list item, so an editor can mark that line.
//!
//! A light reading of block-style YAML by indentation: keys at a block's own indentation,
//! `- ` items, comments and blank lines skipped, quoted keys unquoted. Flow collections
//! (`{a: 1}`, `[1, 2]`) and anchors are not followed: the line found is then the deepest
//! key the path reaches, which still points into the right place.
//!
//! Owns: mapping paths to lines. Must not: decide whether a file is valid (the loader and the
//! checks do) or show values.

/// One meaningful line: its 1-based number, the column its content starts at, and the
/// content. A `- ` item is two entries: the dash, and what follows it, two columns further.
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    number: usize,
    indent: usize,
    item: bool,
    text: &'a str,
}

fn lines(text: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let mut indent = raw.len() - raw.trim_start_matches(' ').len();
        let mut rest = raw[indent..].trim_end();
        if rest.is_empty() || rest.starts_with('#') || rest == "---" || rest == "..." {
            continue;
        }
        // `- - x` and `- key: v`: each dash is an item of the block at its column.
        while rest == "-" || rest.starts_with("- ") {
            out.push(Line {
                number: i + 1,
                indent,
                item: true,
                text: "-",
            });
            let after = rest[1..].trim_start_matches(' ');
            indent += rest.len() - after.len();
            rest = after;
        }
        if !rest.is_empty() {
            out.push(Line {
                number: i + 1,
                indent,
                item: false,
                text: rest,
            });
        }
    }
    out
}

/// The key a line starts with (`web:` → `web`, `"a.b": x` → `a.b`), if it is a mapping entry.
fn key_of(text: &str) -> Option<&str> {
    for q in ['"', '\''] {
        if let Some(inner) = text.strip_prefix(q) {
            let end = inner.find(q)?;
            return inner[end + 1..]
                .trim_start()
                .starts_with(':')
                .then_some(&inner[..end]);
        }
    }
    let end = text
        .find(": ")
        .or_else(|| text.strip_suffix(':').map(str::len))?;
    Some(text[..end].trim_end())
}

/// One step of a path: a key, or the index of a list item.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    Key(&'a str),
    Item(usize),
}

fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let Some(end) = inner.find(']') else { break };
            match inner[..end].parse() {
                Ok(i) => out.push(Step::Item(i)),
                Err(_) => out.push(Step::Key(&inner[..end])),
            }
            rest = &inner[end + 1..];
        }
    }
    out
}

/// The 1-based line of `path` in `text`: of its key or item, else of the deepest part of the
/// path that was found. `None` for an empty path or when not even the first key is found.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let all = lines(text);
    let steps = steps(path);
    // The lines of the current block: `all[from..to]`.
    let (mut from, mut to) = (0, all.len());
    let mut found = None;
    let mut i = 0;
    while i < steps.len() {
        let block = &all[from..to];
        let Some(indent) = block.first().map(|l| l.indent) else {
            break;
        };
        let at = |l: &Line| l.indent == indent;
        let hit = match steps[i] {
            Step::Item(n) => block
                .iter()
                .enumerate()
                .filter(|(_, l)| at(l) && l.item)
                .nth(n),
            Step::Key(_) => {
                // A key may itself hold dots (`com.example.tier` in labels): try the longest
                // run of the remaining steps joined first.
                let mut hit = None;
                for len in (1..=steps.len() - i).rev() {
                    let Some(joined) = join_keys(&steps[i..i + len]) else {
                        continue;
                    };
                    hit = block
                        .iter()
                        .enumerate()
                        .find(|(_, l)| at(l) && !l.item && key_of(l.text) == Some(&joined));
                    if hit.is_some() {
                        i += len - 1;
                        break;
                    }
                }
                hit
            }
        };
        let Some((k, line)) = hit else { break };
        found = Some(line.number);
        let start = from + k + 1;
        // A key's block is what is indented deeper, and the `- ` items at the key's own
        // column (YAML allows `ports:` then `- 80` under it, unindented).
        let end = all[start..to]
            .iter()
            .position(|l| {
                l.indent < line.indent || (l.indent == line.indent && (line.item || !l.item))
            })
            .map_or(to, |p| start + p);
        (from, to) = (start, end);
        i += 1;
    }
    found
}

/// `a.b.c` for a run of keys; `None` when the run holds an item index.
fn join_keys(steps: &[Step]) -> Option<String> {
    let keys: Option<Vec<&str>> = steps
        .iter()
        .map(|s| match s {
            Step::Key(k) => Some(*k),
            Step::Item(_) => None,
        })
        .collect();
    keys.map(|k| k.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# a shop
services:
  web:
    image: nginx
    build: .
    ports:
      - \"8080:80\"
      - target: 443
        published: 8443
    labels:
      com.example.tier: front
  \"db\":
    image: postgres
    environment: {A: 1}
networks:
  back:
    ipam: {}
configs: {}
";

    #[test]
    fn finds_keys_items_and_keys_inside_items() {
        assert_eq!(line_of(FILE, "services"), Some(2));
        assert_eq!(line_of(FILE, "services.web.build"), Some(5));
        assert_eq!(line_of(FILE, "services.web.ports[0]"), Some(7));
        assert_eq!(line_of(FILE, "services.web.ports[1]"), Some(8));
        assert_eq!(line_of(FILE, "services.web.ports[1].published"), Some(9));
        assert_eq!(
            line_of(FILE, "services.web.labels.com.example.tier"),
            Some(11)
        );
        assert_eq!(line_of(FILE, "services.db.image"), Some(13));
        assert_eq!(line_of(FILE, "networks.back.ipam"), Some(17));
        assert_eq!(line_of(FILE, "configs"), Some(18));
    }

    #[test]
    fn falls_back_to_the_deepest_key_found() {
        // Inside a flow mapping: the key that holds it.
        assert_eq!(line_of(FILE, "services.db.environment.A"), Some(14));
        assert_eq!(line_of(FILE, "services.web.ports[5]"), Some(6));
        assert_eq!(line_of(FILE, "services.cache"), Some(2));
        assert_eq!(line_of(FILE, "secrets"), None);
        assert_eq!(line_of(FILE, ""), None);
    }

    #[test]
    fn items_at_the_keys_own_column_belong_to_it() {
        let text = "services:\n  web:\n    ports:\n    - 80\n    - 81\n    image: x\n";
        assert_eq!(line_of(text, "services.web.ports[1]"), Some(5));
        assert_eq!(line_of(text, "services.web.image"), Some(6));
    }

    #[test]
    fn a_key_in_another_block_is_not_taken() {
        // `image` of db must not be found under web.
        let text = "services:\n  web:\n    ports: []\n  db:\n    image: x\n";
        assert_eq!(line_of(text, "services.web.image"), Some(2));
        assert_eq!(line_of(text, "services.db.image"), Some(5));
    }
}
