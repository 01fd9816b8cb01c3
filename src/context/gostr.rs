//! Go's string handling on raw bytes, where Docker's Go code depends on it: names and `.dockerignore` lines are
//! byte strings that need not be UTF-8, and Go decodes each invalid byte as one U+FFFD where it decodes at all.
//! Also the quoting `hash --list` prints names with (the Go oracle prints the same).

/// Go's `utf8.DecodeRune`: the rune at the start of `b` and its width, or None (width 1) for an invalid byte.
/// `b` must not be empty.
pub(crate) fn decode_rune(b: &[u8]) -> (Option<char>, usize) {
    let width = match b[0] {
        0x00..=0x7f => return (Some(char::from(b[0])), 1),
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => return (None, 1),
    };
    // UTF-8 validity of exactly this sequence is Go's acceptance rule (no overlongs, surrogates or > U+10FFFF).
    match b.get(..width).map(std::str::from_utf8) {
        Some(Ok(s)) => (s.chars().next(), width),
        _ => (None, 1),
    }
}

/// The text Go's regexp matches for `b`: valid UTF-8 as is, each invalid byte as one U+FFFD (unlike
/// `String::from_utf8_lossy`, which replaces a whole truncated sequence by one U+FFFD).
pub(crate) fn go_decode(b: &[u8]) -> std::borrow::Cow<'_, str> {
    if let Ok(s) = std::str::from_utf8(b) {
        return s.into();
    }
    let mut out = String::with_capacity(b.len() + 8);
    let mut i = 0;
    while i < b.len() {
        let (c, n) = decode_rune(&b[i..]);
        out.push(c.unwrap_or('\u{fffd}'));
        i += n;
    }
    out.into()
}

/// Go's `unicode.IsSpace`.
fn is_go_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{85}' | '\u{a0}'
    ) || (c > '\u{ff}' && c.is_whitespace())
}

/// Go's `strings.TrimSpace` on bytes (an invalid byte is not a space).
pub(crate) fn trim_space(mut b: &[u8]) -> &[u8] {
    while !b.is_empty() {
        match decode_rune(b) {
            (Some(c), n) if is_go_space(c) => b = &b[n..],
            _ => break,
        }
    }
    while let Some(end) = last_rune_start(b) {
        match decode_rune(&b[end..]) {
            (Some(c), n) if end + n == b.len() && is_go_space(c) => b = &b[..end],
            _ => break,
        }
    }
    b
}

/// Where the last rune of `b` starts, as `utf8.DecodeLastRune` sees it.
fn last_rune_start(b: &[u8]) -> Option<usize> {
    let len = b.len();
    if len == 0 {
        return None;
    }
    let lowest = len.saturating_sub(4);
    let mut start = len - 1;
    while start > lowest && b[start] & 0xc0 == 0x80 {
        start -= 1;
    }
    // A sequence that does not decode to exactly the tail is one invalid byte at the end.
    match decode_rune(&b[start..]) {
        (Some(_), n) if start + n == len => Some(start),
        _ => Some(len - 1),
    }
}

/// Go's `filepath.Clean` on Unix (lexical, `/`-separated), on bytes.
pub fn clean(path: &[u8]) -> Vec<u8> {
    if path.is_empty() {
        return b".".to_vec();
    }
    let rooted = path[0] == b'/';
    let mut out: Vec<&[u8]> = Vec::new();
    for seg in path.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                if out.last().is_some_and(|s| *s != b"..") {
                    out.pop();
                } else if !rooted {
                    out.push(b"..");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join(&b'/');
    match (rooted, joined.is_empty()) {
        (true, _) => [b"/".as_slice(), &joined].concat(),
        (false, true) => b".".to_vec(),
        (false, false) => joined,
    }
}

/// A syntax error in a Go glob (`filepath.ErrBadPattern`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadPattern;

/// Go's `filepath.Match` on Unix, byte for byte, including what it does *not* check: it stops at the first chunk
/// that cannot match, so the rest of the pattern is never validated (`filepath.Match("a*[", ".")` is no error).
pub(crate) fn glob_match(mut pattern: &[u8], mut name: &[u8]) -> Result<bool, BadPattern> {
    'pattern: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            // A trailing * matches the rest of the name unless it has a /.
            return Ok(!name.contains(&b'/'));
        }
        let (t, ok, err) = match_chunk(chunk, name);
        if ok && (t.is_empty() || !pattern.is_empty()) {
            name = t;
            continue;
        }
        if let Some(e) = err {
            return Err(e);
        }
        if star {
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                let (t, ok, err) = match_chunk(chunk, &name[i + 1..]);
                if ok {
                    if pattern.is_empty() && !t.is_empty() {
                        i += 1;
                        continue;
                    }
                    name = t;
                    continue 'pattern;
                }
                if let Some(e) = err {
                    return Err(e);
                }
                i += 1;
            }
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

fn scan_chunk(mut pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut star = false;
    while pattern.first() == Some(&b'*') {
        pattern = &pattern[1..];
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' if i + 1 < pattern.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &pattern[..i], &pattern[i..])
}

/// Go's `matchChunk`: (rest of s, matched, error). After a mismatch it keeps reading the chunk to validate it.
fn match_chunk<'s>(mut chunk: &[u8], mut s: &'s [u8]) -> (&'s [u8], bool, Option<BadPattern>) {
    let mut failed = false;
    while !chunk.is_empty() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match chunk[0] {
            b'[' => {
                let mut r: u32 = 0;
                if !failed {
                    let (c, n) = decode_rune(s);
                    r = c.map_or(0xfffd, u32::from);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let mut negated = false;
                if chunk.first() == Some(&b'^') {
                    negated = true;
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut nrange = 0;
                loop {
                    if chunk.first() == Some(&b']') && nrange > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let lo = match get_esc(chunk) {
                        Ok((lo, rest)) => {
                            chunk = rest;
                            lo
                        }
                        Err(e) => return (b"", false, Some(e)),
                    };
                    let mut hi = lo;
                    if chunk[0] == b'-' {
                        match get_esc(&chunk[1..]) {
                            Ok((h, rest)) => {
                                chunk = rest;
                                hi = h;
                            }
                            Err(e) => return (b"", false, Some(e)),
                        }
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    nrange += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == b'/' {
                        failed = true;
                    }
                    let (_, n) = decode_rune(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
            }
            c => {
                let mut c = c;
                if c == b'\\' {
                    chunk = &chunk[1..];
                    if chunk.is_empty() {
                        return (b"", false, Some(BadPattern));
                    }
                    c = chunk[0];
                }
                if !failed {
                    if c != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    if failed {
        (b"", false, None)
    } else {
        (s, true, None)
    }
}

/// Go's `getEsc`: a possibly escaped character of a character class. The remainder is never empty on success.
fn get_esc(mut chunk: &[u8]) -> Result<(u32, &[u8]), BadPattern> {
    if chunk.is_empty() || chunk[0] == b'-' || chunk[0] == b']' {
        return Err(BadPattern);
    }
    if chunk[0] == b'\\' {
        chunk = &chunk[1..];
        if chunk.is_empty() {
            return Err(BadPattern);
        }
    }
    let (c, n) = decode_rune(chunk);
    let rest = &chunk[n..];
    match c {
        Some(c) if !rest.is_empty() => Ok((u32::from(c), rest)),
        _ => Err(BadPattern),
    }
}

/// How `hash --list` (and the Go oracle) print a path: as is, unless it holds a control byte, `"`, `\` or invalid
/// UTF-8; then in double quotes, with `\\ \" \n \t \r`, and `\xNN` for every other control byte and invalid byte.
pub fn quote_path(b: &[u8]) -> Vec<u8> {
    let plain = std::str::from_utf8(b).is_ok()
        && b.iter()
            .all(|&c| c >= 0x20 && c != 0x7f && c != b'"' && c != b'\\');
    if plain {
        return b.to_vec();
    }
    let mut out = vec![b'"'];
    let mut i = 0;
    while i < b.len() {
        let (c, n) = decode_rune(&b[i..]);
        match c {
            None => out.extend_from_slice(format!("\\x{:02x}", b[i]).as_bytes()),
            Some('\\') => out.extend_from_slice(br"\\"),
            Some('"') => out.extend_from_slice(br#"\""#),
            Some('\n') => out.extend_from_slice(br"\n"),
            Some('\t') => out.extend_from_slice(br"\t"),
            Some('\r') => out.extend_from_slice(br"\r"),
            Some(c) if c < ' ' || c == '\u{7f}' => {
                out.extend_from_slice(format!("\\x{:02x}", u32::from(c)).as_bytes());
            }
            Some(_) => out.extend_from_slice(&b[i..i + n]),
        }
        i += n;
    }
    out.push(b'"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_is_per_invalid_byte() {
        assert_eq!(go_decode(b"a\xe2\x82b"), "a\u{fffd}\u{fffd}b");
        assert_eq!(go_decode(b"\xed\xa0\x80"), "\u{fffd}\u{fffd}\u{fffd}");
        assert_eq!(go_decode("é".as_bytes()), "é");
    }

    #[test]
    fn trim_space_is_go_trim_space() {
        assert_eq!(trim_space(b" \t a b \r\n"), b"a b");
        assert_eq!(trim_space("\u{a0}x\u{3000}".as_bytes()), b"x");
        assert_eq!(trim_space(b"\x1cx\x1f"), b"\x1cx\x1f"); // not spaces in Go
        assert_eq!(trim_space(b"x \xa0"), b"x \xa0"); // an invalid byte is not a space
        assert_eq!(trim_space(b"\x85x"), b"\x85x");
    }

    #[test]
    fn clean_follows_go() {
        assert_eq!(clean(b"./foo/"), b"foo");
        assert_eq!(clean(b"/foo//bar/../baz"), b"/foo/baz");
        assert_eq!(clean(b"../a"), b"../a");
        assert_eq!(clean(b"a/../.."), b"..");
        assert_eq!(clean(b""), b".");
        assert_eq!(clean(b"/"), b"/");
        assert_eq!(clean(b"/.."), b"/");
        assert_eq!(clean(b"!/"), b"!");
    }

    #[test]
    fn glob_syntax_is_checked_only_up_to_the_first_mismatch() {
        let check = |p: &[u8]| glob_match(p, b".");
        assert_eq!(check(b"[ab"), Err(BadPattern));
        assert_eq!(check(b"a\\"), Err(BadPattern));
        assert_eq!(check(b"[]"), Err(BadPattern));
        assert_eq!(check(b"[a-]"), Err(BadPattern));
        assert_eq!(check(b"*["), Err(BadPattern));
        assert_eq!(check(b".*["), Err(BadPattern));
        // The first chunk `a` fails against ".", so nothing after it is validated.
        assert_eq!(check(b"a*["), Ok(false));
        assert_eq!(check(b"a["), Err(BadPattern));
        assert_eq!(check(b"a*\\"), Ok(false));
        assert_eq!(glob_match(b"a*c", b"abc"), Ok(true));
        assert_eq!(glob_match(b"a?c", "aéc".as_bytes()), Ok(true));
        assert_eq!(glob_match(b"[^a]", b"/"), Ok(true));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_path("plain é".as_bytes()), "plain é".as_bytes());
        assert_eq!(
            quote_path(b"a\nb\t\"\\\x01\x7f\xff"),
            br#""a\nb\t\"\\\x01\x7f\xff""#
        );
    }
}
