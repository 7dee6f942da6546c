//! The shorthand filter: comparisons of a record column with a literal, joined by `and`/`or`.
//!
//! ```text
//! filter     := comparison (("and" | "or" | "&&" | "||") comparison)*
//! comparison := column op literal
//! column     := letter or "_", then letters, digits, "_"   (not true/false/null/and/or)
//! op         := "=" | "==" | "!=" | "<" | "<=" | ">" | ">="
//! literal    := number | true | false | null | "string" | 'string'
//! number     := -?digits(.digits)?
//! ```
//!
//! `and`/`or` are case-insensitive; `and` binds tighter than `or` (as VRL's `&&` and `||`); no
//! parentheses. Strings understand `\\` and an escaped quote; any other backslash is kept.
//!
//! Translation: `column = literal` and `column == literal` become `.record."column" == literal`
//! and `!=` stays `!=`: equality never fails, a missing or null column equals only `null`, and an
//! integer column never equals a float literal (`1 == 1.0` is false in VRL). Ordering comparisons
//! become `(.record."column" < literal ?? false)`: a comparison VRL cannot make (a null column,
//! a string against a number) is false, as with SQL's NULL, rather than a failed event.
//!
//! Text that is not entirely shorthand is compiled as VRL; the shorthand is tried first, because
//! `in_stock = true` is also valid VRL (an assignment to a variable, always true).

use std::ops::Range;

/// A shorthand filter translated to VRL, with where each part came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Translation {
    pub(super) vrl: String,
    pieces: Vec<Piece>,
}

/// `translated` bytes of the VRL text came from `original` bytes of the user's text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    translated: Range<usize>,
    original: Range<usize>,
}

impl Translation {
    /// The offset in the user's text that `offset` in the VRL text corresponds to.
    pub(super) fn original_offset(&self, offset: usize) -> usize {
        self.pieces
            .iter()
            .rev()
            .find(|p| p.translated.start <= offset)
            .map_or(0, |p| {
                if p.translated.contains(&offset) {
                    let within =
                        (offset - p.translated.start).min(p.original.len().saturating_sub(1));
                    p.original.start + within
                } else {
                    p.original.end
                }
            })
    }

    fn push(&mut self, text: &str, original: Range<usize>) {
        let start = self.vrl.len();
        self.vrl.push_str(text);
        self.pieces.push(Piece {
            translated: start..self.vrl.len(),
            original,
        });
    }
}

/// The VRL text of `source` when all of it is shorthand.
pub(super) fn translate(source: &str) -> Option<Translation> {
    let tokens = tokenize(source)?;
    let mut out = Translation {
        vrl: String::with_capacity(source.len() * 2),
        pieces: Vec::new(),
    };
    let mut rest = tokens.as_slice();
    loop {
        let [column, op, literal, tail @ ..] = rest else {
            return None;
        };
        let (Token::Column(name), Token::Op(op_text), Token::Literal(value)) =
            (&column.token, &op.token, &literal.token)
        else {
            return None;
        };
        let ordering = !matches!(*op_text, "==" | "!=");
        if ordering {
            out.push("(", column.span.clone());
        }
        out.push(&format!(".record.\"{name}\""), column.span.clone());
        out.push(&format!(" {op_text} "), op.span.clone());
        out.push(value, literal.span.clone());
        if ordering {
            out.push(" ?? false)", literal.span.clone());
        }
        match tail {
            [] => return Some(out),
            [joiner, more @ ..] => {
                let Token::Joiner(joiner_text) = joiner.token else {
                    return None;
                };
                out.push(&format!(" {joiner_text} "), joiner.span.clone());
                rest = more;
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token<'a> {
    Column(&'a str),
    /// VRL's spelling of the operator.
    Op(&'static str),
    /// The literal as VRL text.
    Literal(String),
    /// `&&` or `||`.
    Joiner(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Spanned<'a> {
    token: Token<'a>,
    span: Range<usize>,
}

/// The tokens of `source`, or `None` at the first thing that is not shorthand.
fn tokenize(source: &str) -> Option<Vec<Spanned<'_>>> {
    let mut tokens = Vec::new();
    let mut chars = source.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let token = if c.is_alphabetic() || c == '_' {
            let mut end = start;
            while let Some(&(i, c)) = chars.peek() {
                if !(c.is_alphanumeric() || c == '_') {
                    break;
                }
                end = i + c.len_utf8();
                chars.next();
            }
            let word = &source[start..end];
            match word.to_ascii_lowercase().as_str() {
                "and" => Token::Joiner("&&"),
                "or" => Token::Joiner("||"),
                _ => match word {
                    "true" | "false" | "null" => Token::Literal(word.to_owned()),
                    _ => Token::Column(word),
                },
            }
        } else if c.is_ascii_digit() || c == '-' {
            chars.next();
            let mut text = String::from(c);
            let mut seen_dot = false;
            while let Some(&(_, c)) = chars.peek() {
                if c == '.' && !seen_dot {
                    seen_dot = true;
                } else if !c.is_ascii_digit() {
                    break;
                }
                text.push(c);
                chars.next();
            }
            let digits = text.trim_start_matches('-');
            let valid = !digits.is_empty()
                && !digits.starts_with('.')
                && !digits.ends_with('.')
                && digits.chars().next().is_some_and(|c| c.is_ascii_digit());
            if !valid {
                return None;
            }
            Token::Literal(text)
        } else if c == '"' || c == '\'' {
            chars.next();
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, ch)) = chars.next() {
                match ch {
                    '\\' => match chars.peek() {
                        Some(&(_, next)) if next == c || next == '\\' => {
                            value.push(next);
                            chars.next();
                        }
                        _ => value.push('\\'),
                    },
                    _ if ch == c => {
                        closed = true;
                        break;
                    }
                    _ => value.push(ch),
                }
            }
            if !closed {
                return None;
            }
            Token::Literal(vrl_string(&value))
        } else {
            chars.next();
            let second = chars.peek().map(|&(_, c)| c);
            let (op, two) = match (c, second) {
                ('=', Some('=')) => ("==", true),
                ('!', Some('=')) => ("!=", true),
                ('<', Some('=')) => ("<=", true),
                ('>', Some('=')) => (">=", true),
                ('&', Some('&')) => ("&&", true),
                ('|', Some('|')) => ("||", true),
                ('=', _) => ("==", false),
                ('<', _) => ("<", false),
                ('>', _) => (">", false),
                _ => return None,
            };
            if two {
                chars.next();
            }
            if matches!(op, "&&" | "||") {
                Token::Joiner(op)
            } else {
                Token::Op(op)
            }
        };
        let end = chars.peek().map_or(source.len(), |&(i, _)| i);
        tokens.push(Spanned {
            token,
            span: start..end,
        });
    }
    Some(tokens)
}

/// `value` as a VRL string literal. Braces are escaped so that `{{` never starts a template.
fn vrl_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '{' => out.push_str("\\{"),
            '}' => out.push_str("\\}"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}
