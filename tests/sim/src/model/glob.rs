//! Glob-style patterns as Redis matches them (KEYS, PUBSUB CHANNELS):
//! `*`, `?`, `[...]` with `^` negation and `a-z` ranges, and `\` escapes.
//!
//! Written from Redis's documented and observed behaviour: an unterminated `[` takes the
//! rest of the pattern as its class, a reversed range is swapped, and range bounds compare
//! as C `char`s (signed on the x86-64 and aarch64 Linux builds Redis ships).

#[derive(Debug)]
enum Token {
    Literal(u8),
    Any,
    Star,
    Class { negate: bool, items: Vec<ClassItem> },
}

#[derive(Debug)]
enum ClassItem {
    Byte(u8),
    Range(i8, i8),
}

fn compile(p: &[u8]) -> Vec<Token> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'*' => {
                if !matches!(out.last(), Some(Token::Star)) {
                    out.push(Token::Star);
                }
                i += 1;
            }
            b'?' => {
                out.push(Token::Any);
                i += 1;
            }
            b'[' => {
                i += 1;
                let negate = p.get(i) == Some(&b'^');
                if negate {
                    i += 1;
                }
                let mut items = Vec::new();
                loop {
                    if i >= p.len() {
                        break; // unterminated: the class ends with the pattern
                    }
                    if p[i] == b'\\' && i + 1 < p.len() {
                        items.push(ClassItem::Byte(p[i + 1]));
                        i += 2;
                    } else if p[i] == b']' {
                        i += 1;
                        break;
                    } else if i + 2 < p.len() && p[i + 1] == b'-' {
                        let (mut a, mut b) = (p[i] as i8, p[i + 2] as i8);
                        if a > b {
                            std::mem::swap(&mut a, &mut b);
                        }
                        items.push(ClassItem::Range(a, b));
                        i += 3;
                    } else {
                        items.push(ClassItem::Byte(p[i]));
                        i += 1;
                    }
                }
                out.push(Token::Class { negate, items });
            }
            b'\\' if i + 1 < p.len() => {
                out.push(Token::Literal(p[i + 1]));
                i += 2;
            }
            b => {
                out.push(Token::Literal(b));
                i += 1;
            }
        }
    }
    out
}

impl Token {
    fn matches(&self, c: u8) -> bool {
        match self {
            Token::Literal(b) => *b == c,
            Token::Any => true,
            Token::Star => false,
            Token::Class { negate, items } => {
                let hit = items.iter().any(|it| match it {
                    ClassItem::Byte(b) => *b == c,
                    ClassItem::Range(a, b) => (*a..=*b).contains(&(c as i8)),
                });
                hit != *negate
            }
        }
    }
}

/// Whether `s` matches the glob `pattern` (case-sensitive), as Redis's `stringmatchlen`.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    let tokens = compile(pattern);
    // Every token but `*` consumes exactly one byte, so backtracking to the last star is
    // enough (and never exponential).
    let (mut t, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    loop {
        if t < tokens.len() {
            if let Token::Star = tokens[t] {
                star = Some((t, i));
                t += 1;
                continue;
            }
            if i < s.len() && tokens[t].matches(s[i]) {
                t += 1;
                i += 1;
                continue;
            }
        } else if i == s.len() {
            return true;
        }
        match star {
            Some((st, si)) if si < s.len() => {
                star = Some((st, si + 1));
                t = st + 1;
                i = si + 1;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match as m;

    #[test]
    fn basics() {
        assert!(m(b"*", b""));
        assert!(m(b"*", b"anything"));
        assert!(m(b"", b""));
        assert!(!m(b"", b"a"));
        assert!(m(b"news.*", b"news.1"));
        assert!(m(b"news.*", b"news."));
        assert!(!m(b"news.*", b"news"));
        assert!(m(b"h?llo", b"hello"));
        assert!(!m(b"h?llo", b"hllo"));
        assert!(m(b"h[ae]llo", b"hallo"));
        assert!(!m(b"h[ae]llo", b"hillo"));
        assert!(m(b"h[^e]llo", b"hallo"));
        assert!(!m(b"h[^e]llo", b"hello"));
        assert!(m(b"h[a-b]llo", b"hbllo"));
        assert!(m(b"h[b-a]llo", b"hbllo"));
        assert!(m(b"x\\*y", b"x*y"));
        assert!(!m(b"x\\*y", b"xzy"));
        assert!(m(b"a*b*c", b"aXXbYYc"));
        assert!(!m(b"a*b*c", b"aXXbYY"));
        assert!(m(b"[ab]1", b"b1"));
        assert!(m(b"a\\", b"a\\"));
        assert!(m(b"[abc", b"b"));
        assert!(!m(b"[]a", b"a"));
        assert!(m(b"**a", b"ba"));
    }

    #[test]
    fn no_exponential_blowup() {
        let pattern = b"a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b";
        let s = vec![b'a'; 5000];
        assert!(!m(pattern, &s));
    }
}
