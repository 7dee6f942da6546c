//! A dead letter read back from the topic, with no I/O: its headers parsed, the reason it is
//! grouped under, and whether `--reason`/`--since` select it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::dead_letter::{DeadLetter, Original, names};

/// One message of the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Where the letter is in the dead-letter topic.
    pub partition: i32,
    pub offset: i64,
    /// When it was written (Unix ms), from the message timestamp.
    pub time: Option<i64>,
    /// The original key and value, byte for byte.
    pub key: Option<Bytes>,
    pub payload: Option<Bytes>,
    pub why: Why,
}

/// The `sluice.dlq.*` headers. A header that is missing (a message some other tool wrote) reads
/// as empty, or as `-1` for a position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Why {
    pub sink: String,
    pub stage: String,
    pub error_type: String,
    pub reason: String,
    pub status: Option<u16>,
    pub attempts: u32,
    /// Where the original event was in the table's topic.
    pub topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
}

impl Why {
    /// Reads the headers of a message (name, value).
    pub fn parse<'a>(headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> Self {
        let values: BTreeMap<&str, String> = headers
            .into_iter()
            .map(|(key, value)| {
                (
                    key,
                    String::from_utf8_lossy(value.unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        let text = |name: &str| values.get(name).cloned().unwrap_or_default();
        let number = |name: &str| values.get(name).and_then(|v| v.parse::<i64>().ok());
        Self {
            sink: text(names::SINK),
            stage: text(names::STAGE),
            error_type: text(names::ERROR_TYPE),
            reason: text(names::REASON),
            status: values.get(names::STATUS).and_then(|v| v.parse().ok()),
            attempts: values
                .get(names::ATTEMPTS)
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
            topic: text(names::TOPIC),
            source_partition: number(names::PARTITION)
                .and_then(|p| i32::try_from(p).ok())
                .unwrap_or(-1),
            source_offset: number(names::OFFSET).unwrap_or(-1),
        }
    }
}

impl Stored {
    /// The original event as the consumer saw it: its topic, partition and offset (from the
    /// headers), key and value.
    pub fn original(&self) -> Original {
        Original {
            topic: Arc::from(self.why.topic.as_str()),
            partition: self.why.source_partition,
            offset: self.why.source_offset,
            key: self.key.clone(),
            payload: self.payload.clone(),
        }
    }

    /// This letter unchanged, to write again (same reason, attempts and time).
    pub fn unchanged(&self) -> DeadLetter {
        DeadLetter {
            stage: Cow::Owned(self.why.stage.clone()),
            error_type: self.why.error_type.clone(),
            reason: self.why.reason.clone(),
            status: self.why.status,
            attempts: self.why.attempts,
            at: self.time,
        }
    }

    /// `letter`, the failure of a redrive of this letter, counting the attempts before it.
    pub fn again(&self, mut letter: DeadLetter) -> DeadLetter {
        letter.attempts = letter.attempts.saturating_add(self.why.attempts);
        letter
    }

    /// Where the letter is in the dead-letter topic: `partition:offset`.
    pub fn position(&self) -> String {
        format!("{}:{}", self.partition, self.offset)
    }
}

/// The reason a letter is grouped under: its reason with what is particular to one event
/// blanked out, so that one problem is one line however many events it hit. Quoted text
/// (`'…'`, `"…"`: a document id, a field's value) becomes `'…'`, and a bracketed number or
/// position (`[1:9]`, `[3]`) becomes `[…]`; field names and types in brackets (`[code]`,
/// `[long]`) stay.
///
/// ```text
/// [1:9] failed to parse field [code] of type [long] in document with id '17'. Preview of field's value: 'x'
/// […] failed to parse field [code] of type [long] in document with id '…'. Preview of field's value: '…'
/// ```
pub fn reason_group(reason: &str) -> String {
    let chars: Vec<char> = reason.chars().collect();
    let mut out = String::with_capacity(reason.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let before_ok = i == 0 || !chars[i - 1].is_alphanumeric();
        if (c == '\'' || c == '"') && before_ok {
            // A quote opens after a non-alphanumeric character and closes at the same quote
            // followed by one ("field's value" is no quote).
            let close = (i + 1..chars.len()).find(|&j| {
                chars[j] == c && chars.get(j + 1).is_none_or(|next| !next.is_alphanumeric())
            });
            if let Some(close) = close {
                out.push(c);
                out.push('…');
                out.push(c);
                i = close + 1;
                continue;
            }
        }
        if c == '[' {
            let close = (i + 1..chars.len()).find(|&j| chars[j] == ']');
            if let Some(close) = close {
                let inside = &chars[i + 1..close];
                if !inside.is_empty()
                    && inside.iter().any(char::is_ascii_digit)
                    && inside
                        .iter()
                        .all(|c| c.is_ascii_digit() || matches!(c, ':' | ',' | '.' | ' ' | '-'))
                {
                    out.push_str("[…]");
                    i = close + 1;
                    continue;
                }
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// Which letters a command looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// The reason as `list` prints it, or text the reason contains.
    pub reason: Option<String>,
    /// Letters written at or after this time (Unix ms).
    pub since: Option<i64>,
    /// Only the letter at this partition and offset of the dead-letter topic.
    pub position: Option<(i32, i64)>,
}

impl Filter {
    pub fn matches(&self, letter: &Stored) -> bool {
        let reason = self.reason.as_deref().is_none_or(|wanted| {
            letter.why.reason.contains(wanted) || reason_group(&letter.why.reason) == wanted
        });
        let since = self
            .since
            .is_none_or(|since| letter.time.is_some_and(|time| time >= since));
        let position = self.position.is_none_or(|(partition, offset)| {
            (letter.partition, letter.offset) == (partition, offset)
        });
        reason && since && position
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rdkafka::message::Headers as _;

    use super::*;
    use crate::dead_letter::headers;

    const ES_REASON: &str = "[1:9] failed to parse field [code] of type [long] in document with \
                             id '17'. Preview of field's value: 'not a number' (caused by \
                             illegal_argument_exception: For input string: \"not a number\")";

    fn stored(reason: &str, time: i64) -> Stored {
        Stored {
            partition: 0,
            offset: 3,
            time: Some(time),
            key: None,
            payload: None,
            why: Why {
                reason: reason.to_owned(),
                ..Why::default()
            },
        }
    }

    #[test]
    fn reasons_of_one_problem_group_together_whatever_the_document() {
        let other = ES_REASON
            .replace("'17'", "'4711'")
            .replace("[1:9]", "[1:23]")
            .replace("not a number", "x7");
        assert_eq!(reason_group(ES_REASON), reason_group(&other));
        assert_eq!(
            reason_group(ES_REASON),
            "[…] failed to parse field [code] of type [long] in document with id '…'. Preview \
             of field's value: '…' (caused by illegal_argument_exception: For input string: \"…\")"
        );
        // Field names, types and apostrophes stay; so does a reason with nothing particular.
        assert_eq!(
            reason_group("limit of total fields [1000] in index [items-v1] exceeded"),
            "limit of total fields […] in index [items-v1] exceeded"
        );
        assert_eq!(reason_group("it's 'open"), "it's 'open");
        assert_eq!(reason_group("boom"), "boom");
    }

    #[test]
    fn reason_filters_take_the_grouped_reason_or_part_of_the_reason() {
        let letter = stored(ES_REASON, 1_000);
        let by = |reason: &str| Filter {
            reason: Some(reason.to_owned()),
            ..Filter::default()
        };
        assert!(by(&reason_group(ES_REASON)).matches(&letter));
        assert!(by("failed to parse field [code]").matches(&letter));
        assert!(!by("failed to parse field [name]").matches(&letter));
        let since = |since| Filter {
            since: Some(since),
            ..Filter::default()
        };
        assert!(since(1_000).matches(&letter));
        assert!(!since(1_001).matches(&letter));
        assert!(Filter::default().matches(&letter));
        let at = |partition, offset| Filter {
            position: Some((partition, offset)),
            ..Filter::default()
        };
        assert!(at(letter.partition, letter.offset).matches(&letter));
        assert!(!at(letter.partition, letter.offset + 1).matches(&letter));
        assert!(!at(letter.partition + 1, letter.offset).matches(&letter));
    }

    #[test]
    fn headers_read_back_what_the_dead_letter_producer_writes() {
        let original = Original {
            topic: "sluice.public.items".into(),
            partition: 2,
            offset: 41,
            key: Some(Bytes::from_static(b"[17]")),
            payload: Some(Bytes::from_static(b"\x08\x01")),
        };
        let letter = DeadLetter {
            status: Some(400),
            attempts: 2,
            ..DeadLetter::new("index", "document_parsing_exception", ES_REASON)
        };
        let written = headers("items-es", &original, &letter);
        let why = Why::parse(written.iter().map(|h| (h.key, h.value)));
        assert_eq!(
            why,
            Why {
                sink: "items-es".to_owned(),
                stage: "index".to_owned(),
                error_type: "document_parsing_exception".to_owned(),
                reason: ES_REASON.to_owned(),
                status: Some(400),
                attempts: 2,
                topic: "sluice.public.items".to_owned(),
                source_partition: 2,
                source_offset: 41,
            }
        );
        let read = Stored {
            partition: 0,
            offset: 9,
            time: Some(5),
            key: original.key.clone(),
            payload: original.payload.clone(),
            why,
        };
        // Written again unchanged: the same headers and time.
        let unchanged = read.unchanged();
        assert_eq!((unchanged.at, unchanged.attempts), (Some(5), 2));
        let again = headers("items-es", &read.original(), &unchanged);
        let a: Vec<_> = written.iter().map(|h| (h.key, h.value)).collect();
        let b: Vec<_> = again.iter().map(|h| (h.key, h.value)).collect();
        assert_eq!(a, b);
        // Failing again adds the redrive's attempts to the earlier ones.
        let failed = read.again(DeadLetter::new("transform", "script_error", "boom"));
        assert_eq!(failed.attempts, 3);
    }
}
