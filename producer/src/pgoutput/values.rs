//! Typing column text: Postgres text output → [`sluice_proto::v1::Value`].
//!
//! The replication session runs with `DateStyle=ISO, TimeZone=UTC, IntervalStyle=iso_8601,
//! bytea_output=hex, extra_float_digits=1`, so each type has exactly one text form to expect.
//! What changes on the way is only what the wire contract asks for: ISO-8601 `T` and `Z` in
//! timestamps, astronomical years instead of `BC`, `±HH:MM` offsets, bytes instead of hex.
//!
//! A text that does not have its type's form (it cannot happen with the session settings above)
//! becomes `Unknown(text)`: the row is still delivered, with the value as Postgres printed it,
//! instead of stopping the stream.

use sluice_proto::v1::value::Kind;
use sluice_proto::v1::{ArrayValue, Value};

use super::types::TypeKind;

/// Types one column's text output.
pub fn parse_text(kind: &TypeKind, text: &str) -> Value {
    Value::from(typed(kind, text).unwrap_or_else(|| Kind::Unknown(text.to_owned())))
}

fn typed(kind: &TypeKind, text: &str) -> Option<Kind> {
    Some(match kind {
        TypeKind::Bool => match text {
            "t" => Kind::Bool(true),
            "f" => Kind::Bool(false),
            _ => return None,
        },
        TypeKind::Int => Kind::Int(text.parse().ok()?),
        // Rust's parser reads Postgres's `NaN`, `Infinity`, `-Infinity` and keeps the sign of
        // `-0`; extra_float_digits=1 prints the shortest text that round-trips exactly.
        TypeKind::Float => Kind::Double(text.parse().ok()?),
        TypeKind::Numeric => Kind::Numeric(numeric(text)?.to_owned()),
        TypeKind::Text => Kind::Text(text.to_owned()),
        TypeKind::Bytea => Kind::Bytes(hex::decode(text.strip_prefix("\\x")?).ok()?),
        TypeKind::Timestamp => Kind::Timestamp(timestamp(text)?),
        TypeKind::Timestamptz => Kind::Timestamptz(timestamptz(text)?),
        TypeKind::Date => Kind::Date(date_only(text)?),
        TypeKind::Time => {
            Clock::parse(text)?;
            Kind::Time(text.to_owned())
        }
        TypeKind::Timetz => Kind::Timetz(timetz(text)?),
        TypeKind::Interval if text.starts_with('P') => Kind::Interval(text.to_owned()),
        TypeKind::Interval => return None,
        TypeKind::Uuid if is_uuid(text) => Kind::Uuid(text.to_owned()),
        TypeKind::Uuid => return None,
        TypeKind::Json => Kind::Json(text.to_owned()),
        TypeKind::Array { element, delimiter } => {
            Kind::Array(ArrayParser::new(text, element, *delimiter)?.parse()?)
        }
        TypeKind::Unknown => Kind::Unknown(text.to_owned()),
    })
}

/// `numeric_out` prints plain decimals (never an exponent) or `NaN`, `Infinity`, `-Infinity`.
fn numeric(text: &str) -> Option<&str> {
    let special = matches!(text, "NaN" | "Infinity" | "-Infinity");
    let digits = text.strip_prefix('-').unwrap_or(text);
    let decimal = !digits.is_empty()
        && digits.bytes().any(|b| b.is_ascii_digit())
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && digits.bytes().filter(|&b| b == b'.').count() <= 1;
    (special || decimal).then_some(text)
}

fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// `n` ASCII digits at the start of `text`, as a number, and the rest.
fn digits(text: &str, n: usize) -> Option<(u32, &str)> {
    let head = text.get(..n)?;
    if !head.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((head.parse().ok()?, text.get(n..)?))
}

/// Strips the ` BC` that ISO DateStyle appends to dates before year 1.
fn split_era(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (text, false),
    }
}

/// A calendar date with an astronomical year (1 BC = year 0, 44 BC = year -43).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Date {
    year: i64,
    month: u32,
    day: u32,
}

impl Date {
    /// `YYYY-MM-DD`, where the year has four or more digits (Postgres dates end in 5874897 AD,
    /// timestamps in 294276 AD; a bound on the digits keeps the day arithmetic from overflowing).
    fn parse(text: &str, bc: bool) -> Option<Self> {
        let (year, rest) = text.split_once('-')?;
        if !(4..=7).contains(&year.len()) || !year.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let year: i64 = year.parse().ok()?;
        let (month, rest) = digits(rest, 2)?;
        let (day, rest) = digits(rest.strip_prefix('-')?, 2)?;
        if !rest.is_empty() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
            return None;
        }
        let year = if bc { 1 - year } else { year };
        Some(Self { year, month, day })
    }

    /// ISO-8601: four digits, a `-` for years before 0, a `+` for years after 9999 (the
    /// expanded representation, as `java.time` prints it).
    fn iso(self) -> String {
        let year = match self.year {
            y if y < 0 => format!("-{:04}", y.unsigned_abs()),
            y if y > 9999 => format!("+{y}"),
            y => format!("{y:04}"),
        };
        format!("{year}-{:02}-{:02}", self.month, self.day)
    }

    /// Days since 1970-01-01 (proleptic Gregorian), after H. Hinnant's `days_from_civil`.
    fn to_days(self) -> i64 {
        let year = if self.month <= 2 {
            self.year - 1
        } else {
            self.year
        };
        let era = year.div_euclid(400);
        let year_of_era = year.rem_euclid(400);
        let month = i64::from(self.month);
        let day_of_year =
            (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        era * 146_097 + day_of_era - 719_468
    }

    /// The inverse of [`Date::to_days`] (Hinnant's `civil_from_days`).
    fn from_days(days: i64) -> Self {
        let days = days + 719_468;
        let era = days.div_euclid(146_097);
        let day_of_era = days.rem_euclid(146_097);
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let shifted_month = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
        let month = if shifted_month < 10 {
            shifted_month + 3
        } else {
            shifted_month - 9
        };
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        // Both are in range by construction (1..=31, 1..=12).
        Self {
            year,
            month: u32::try_from(month).unwrap_or(1),
            day: u32::try_from(day).unwrap_or(1),
        }
    }
}

/// `HH:MM:SS[.ffffff]`; the fraction is kept as printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Clock<'a> {
    hour: u32,
    minute: u32,
    second: u32,
    /// `.123456`, or empty.
    fraction: &'a str,
}

impl<'a> Clock<'a> {
    fn parse(text: &'a str) -> Option<Self> {
        let (hour, rest) = digits(text, 2)?;
        let (minute, rest) = digits(rest.strip_prefix(':')?, 2)?;
        let (second, fraction) = digits(rest.strip_prefix(':')?, 2)?;
        let valid_fraction = fraction.is_empty()
            || fraction
                .strip_prefix('.')
                .is_some_and(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
        // 24:00:00 is a valid `time`; leap seconds are not printed by Postgres.
        (valid_fraction && hour <= 24 && minute < 60 && second < 60).then_some(Self {
            hour,
            minute,
            second,
            fraction,
        })
    }

    fn seconds(self) -> i64 {
        i64::from(self.hour * 3600 + self.minute * 60 + self.second)
    }
}

/// A UTC offset as Postgres prints it: `+HH`, `+HH:MM` or `+HH:MM:SS` (ISO DateStyle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Offset {
    negative: bool,
    hours: u32,
    minutes: u32,
    seconds: u32,
}

impl Offset {
    fn parse(text: &str) -> Option<Self> {
        let negative = match text.as_bytes().first()? {
            b'+' => false,
            b'-' => true,
            _ => return None,
        };
        let (hours, mut rest) = digits(text.get(1..)?, 2)?;
        let mut minutes = 0;
        let mut seconds = 0;
        if let Some(after) = rest.strip_prefix(':') {
            (minutes, rest) = digits(after, 2)?;
            if let Some(after) = rest.strip_prefix(':') {
                (seconds, rest) = digits(after, 2)?;
            }
        }
        (rest.is_empty() && minutes < 60 && seconds < 60).then_some(Self {
            negative,
            hours,
            minutes,
            seconds,
        })
    }

    fn total_seconds(self) -> i64 {
        let magnitude = i64::from(self.hours * 3600 + self.minutes * 60 + self.seconds);
        if self.negative { -magnitude } else { magnitude }
    }

    /// `±HH:MM`, or `±HH:MM:SS` when the offset has seconds (ISO-8601 has no shorter exact form).
    fn iso(self) -> String {
        let sign = if self.negative { '-' } else { '+' };
        let mut out = format!("{sign}{:02}:{:02}", self.hours, self.minutes);
        if self.seconds != 0 {
            out.push_str(&format!(":{:02}", self.seconds));
        }
        out
    }
}

/// `0044-03-15 BC` → `-0043-03-15`; `infinity` and `-infinity` stay as they are.
fn date_only(text: &str) -> Option<String> {
    if is_infinity(text) {
        return Some(text.to_owned());
    }
    let (text, bc) = split_era(text);
    Some(Date::parse(text, bc)?.iso())
}

fn is_infinity(text: &str) -> bool {
    matches!(text, "infinity" | "-infinity")
}

/// `2024-01-02 03:04:05.123456` → `2024-01-02T03:04:05.123456`.
fn timestamp(text: &str) -> Option<String> {
    if is_infinity(text) {
        return Some(text.to_owned());
    }
    let (text, bc) = split_era(text);
    let (date, clock) = text.split_once(' ')?;
    let date = Date::parse(date, bc)?;
    Clock::parse(clock)?;
    Some(format!("{}T{clock}", date.iso()))
}

/// `2024-01-02 03:04:05.123456+00` → `2024-01-02T03:04:05.123456Z`, converting to UTC when the
/// offset is not zero (the session is UTC, so that only happens if the setting was lost).
fn timestamptz(text: &str) -> Option<String> {
    if is_infinity(text) {
        return Some(text.to_owned());
    }
    let (text, bc) = split_era(text);
    let (date, time) = text.split_once(' ')?;
    let date = Date::parse(date, bc)?;
    let split = time.find(['+', '-'])?;
    let clock = Clock::parse(time.get(..split)?)?;
    let offset = Offset::parse(time.get(split..)?)?;
    let local = date.to_days() * 86_400 + clock.seconds();
    let utc = local - offset.total_seconds();
    let utc_date = Date::from_days(utc.div_euclid(86_400));
    let second_of_day = utc.rem_euclid(86_400);
    Some(format!(
        "{}T{:02}:{:02}:{:02}{}Z",
        utc_date.iso(),
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        clock.fraction
    ))
}

/// `03:04:05.123+02` → `03:04:05.123+02:00`. A time of day cannot be moved to UTC without a
/// date, so the offset is kept.
fn timetz(text: &str) -> Option<String> {
    let split = text.find(['+', '-'])?;
    let clock = text.get(..split)?;
    Clock::parse(clock)?;
    let offset = Offset::parse(text.get(split..)?)?;
    Some(format!("{clock}{}", offset.iso()))
}

/// A parser of `array_out`'s text (and what `array_in` accepts around it):
///
/// ```text
///  [lo:hi][lo:hi]=   optional dimension decoration, printed when a lower bound is not 1
///  { elem , elem }   elem: NULL | unquoted text | "quoted \"text\"" | a nested { … }
/// ```
///
/// Lower bounds are dropped: the wire format has plain lists.
struct ArrayParser<'a> {
    rest: &'a str,
    element: &'a TypeKind,
    delimiter: char,
}

impl<'a> ArrayParser<'a> {
    fn new(text: &'a str, element: &'a TypeKind, delimiter: char) -> Option<Self> {
        let rest = match text.strip_prefix('[') {
            Some(_) => {
                let (dimensions, body) = text.split_once('=')?;
                let valid = dimensions
                    .bytes()
                    .all(|b| b.is_ascii_digit() || matches!(b, b'[' | b']' | b':' | b'-'));
                if !valid {
                    return None;
                }
                body
            }
            None => text,
        };
        Some(Self {
            rest,
            element,
            delimiter,
        })
    }

    fn parse(mut self) -> Option<ArrayValue> {
        self.skip_whitespace();
        let array = self.array()?;
        self.skip_whitespace();
        self.rest.is_empty().then_some(array)
    }

    fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.rest = self.rest.get(c.len_utf8()..)?;
        Some(c)
    }

    fn skip_whitespace(&mut self) {
        self.rest = self.rest.trim_start();
    }

    /// `{ … }`, the opening brace not yet consumed.
    fn array(&mut self) -> Option<ArrayValue> {
        if self.bump()? != '{' {
            return None;
        }
        let mut elements = Vec::new();
        self.skip_whitespace();
        if self.peek()? == '}' {
            self.bump();
            return Some(ArrayValue { elements });
        }
        loop {
            self.skip_whitespace();
            let value = match self.peek()? {
                '{' => Value::from(Kind::Array(self.array()?)),
                '"' => parse_text(self.element, &self.quoted()?),
                _ => self.unquoted()?,
            };
            elements.push(value);
            self.skip_whitespace();
            match self.bump()? {
                '}' => return Some(ArrayValue { elements }),
                c if c == self.delimiter => {}
                _ => return None,
            }
        }
    }

    /// `"…"` with `\x` meaning `x`; the opening quote not yet consumed.
    fn quoted(&mut self) -> Option<String> {
        self.bump();
        let mut out = String::new();
        loop {
            match self.bump()? {
                '"' => return Some(out),
                '\\' => out.push(self.bump()?),
                c => out.push(c),
            }
        }
    }

    /// Everything up to the next delimiter or closing brace, trimmed. An unquoted `NULL` (any
    /// case, with no backslash in it) is the null element; `"NULL"` is the text NULL.
    fn unquoted(&mut self) -> Option<Value> {
        let mut out = String::new();
        let mut escaped = false;
        // Trailing whitespace is insignificant unless a backslash protected it.
        let mut significant_len = 0;
        loop {
            match self.peek()? {
                '}' => break,
                c if c == self.delimiter => break,
                '"' | '{' => return None,
                '\\' => {
                    self.bump();
                    out.push(self.bump()?);
                    escaped = true;
                    significant_len = out.len();
                }
                c => {
                    self.bump();
                    out.push(c);
                    if !c.is_whitespace() {
                        significant_len = out.len();
                    }
                }
            }
        }
        out.truncate(significant_len);
        if out.is_empty() && !escaped {
            return None;
        }
        if !escaped && out.eq_ignore_ascii_case("NULL") {
            return Some(Value::null());
        }
        Some(parse_text(self.element, &out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(kind: &TypeKind, text: &str) -> Kind {
        parse_text(kind, text).kind.unwrap()
    }

    fn array_of(element: TypeKind) -> TypeKind {
        TypeKind::Array {
            element: Box::new(element),
            delimiter: ',',
        }
    }

    fn list(elements: Vec<Value>) -> Value {
        Value::from(Kind::Array(ArrayValue { elements }))
    }

    fn int(i: i64) -> Value {
        Value::from(Kind::Int(i))
    }

    fn text(s: &str) -> Value {
        Value::from(Kind::Text(s.to_owned()))
    }

    fn unknown(s: &str) -> Kind {
        Kind::Unknown(s.to_owned())
    }

    #[test]
    fn bools() {
        assert_eq!(kind(&TypeKind::Bool, "t"), Kind::Bool(true));
        assert_eq!(kind(&TypeKind::Bool, "f"), Kind::Bool(false));
        assert_eq!(kind(&TypeKind::Bool, "yes"), unknown("yes"));
    }

    #[test]
    fn integers_cover_the_i64_range() {
        assert_eq!(kind(&TypeKind::Int, "0"), Kind::Int(0));
        assert_eq!(kind(&TypeKind::Int, "-32768"), Kind::Int(-32_768));
        assert_eq!(
            kind(&TypeKind::Int, "-9223372036854775808"),
            Kind::Int(i64::MIN)
        );
        assert_eq!(
            kind(&TypeKind::Int, "9223372036854775807"),
            Kind::Int(i64::MAX)
        );
        // An xid8 beyond i64 cannot be an Int; it still arrives.
        assert_eq!(
            kind(&TypeKind::Int, "18446744073709551615"),
            unknown("18446744073709551615")
        );
        assert_eq!(kind(&TypeKind::Int, "1.5"), unknown("1.5"));
    }

    #[test]
    fn floats_keep_nan_infinities_and_the_sign_of_zero() {
        let double = |t| match kind(&TypeKind::Float, t) {
            Kind::Double(d) => d,
            other => panic!("{t} typed as {other:?}"),
        };
        assert!(double("NaN").is_nan());
        assert_eq!(double("Infinity"), f64::INFINITY);
        assert_eq!(double("-Infinity"), f64::NEG_INFINITY);
        let zero = double("-0");
        assert!(zero == 0.0 && zero.is_sign_negative());
        assert!(double("0").is_sign_positive());
        assert_eq!(double("1e+300"), 1e300);
        assert_eq!(double("1.5e-07"), 1.5e-7);
        assert_eq!(double("0.1"), 0.1);
        assert_eq!(double("1.7976931348623157e+308"), f64::MAX);
        assert_eq!(kind(&TypeKind::Float, "abc"), unknown("abc"));
    }

    #[test]
    fn numerics_stay_exact_text() {
        for t in [
            "0",
            "-1.50",
            "1234567890123456789012345678901234567890.5",
            "0.0000000000000000000000000000000000000001",
            "NaN",
            "Infinity",
            "-Infinity",
        ] {
            assert_eq!(kind(&TypeKind::Numeric, t), Kind::Numeric(t.into()));
        }
        for t in ["", "-", ".", "1.2.3", "1e5", "nan"] {
            assert_eq!(kind(&TypeKind::Numeric, t), unknown(t));
        }
    }

    #[test]
    fn text_json_interval_uuid_and_unknown_pass_through() {
        assert_eq!(kind(&TypeKind::Text, ""), Kind::Text(String::new()));
        assert_eq!(
            kind(&TypeKind::Text, "héllo \"w\" \\ {}"),
            Kind::Text("héllo \"w\" \\ {}".into())
        );
        assert_eq!(
            kind(&TypeKind::Json, r#"{"a": [1, null]}"#),
            Kind::Json(r#"{"a": [1, null]}"#.into())
        );
        for t in ["P1Y2M3DT4H5M6.5S", "PT0S", "P-1D", "P-1Y-2M3DT-4H-5M-6S"] {
            assert_eq!(kind(&TypeKind::Interval, t), Kind::Interval(t.into()));
        }
        assert_eq!(kind(&TypeKind::Interval, "1 day"), unknown("1 day"));
        let uuid = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        assert_eq!(kind(&TypeKind::Uuid, uuid), Kind::Uuid(uuid.into()));
        assert_eq!(kind(&TypeKind::Uuid, "a0eebc99"), unknown("a0eebc99"));
        assert_eq!(
            kind(&TypeKind::Unknown, "192.168.0.1/24"),
            unknown("192.168.0.1/24")
        );
    }

    #[test]
    fn bytea_hex_becomes_bytes() {
        assert_eq!(
            kind(&TypeKind::Bytea, "\\x000aff"),
            Kind::Bytes(vec![0, 0x0a, 0xff])
        );
        assert_eq!(kind(&TypeKind::Bytea, "\\x"), Kind::Bytes(vec![]));
        assert_eq!(kind(&TypeKind::Bytea, "\\x0"), unknown("\\x0"));
        assert_eq!(kind(&TypeKind::Bytea, "\\000"), unknown("\\000"));
    }

    #[test]
    fn timestamps_become_iso_8601() {
        let ts = |t| kind(&TypeKind::Timestamp, t);
        assert_eq!(
            ts("2024-01-02 03:04:05.123456"),
            Kind::Timestamp("2024-01-02T03:04:05.123456".into())
        );
        assert_eq!(
            ts("2024-01-02 03:04:05"),
            Kind::Timestamp("2024-01-02T03:04:05".into())
        );
        assert_eq!(
            ts("0044-03-15 12:00:00 BC"),
            Kind::Timestamp("-0043-03-15T12:00:00".into())
        );
        assert_eq!(
            ts("0001-01-01 00:00:00 BC"),
            Kind::Timestamp("0000-01-01T00:00:00".into())
        );
        assert_eq!(
            ts("294276-12-31 23:59:59.999999"),
            Kind::Timestamp("+294276-12-31T23:59:59.999999".into())
        );
        assert_eq!(ts("infinity"), Kind::Timestamp("infinity".into()));
        assert_eq!(ts("-infinity"), Kind::Timestamp("-infinity".into()));
        assert_eq!(ts("2024-13-02 03:04:05"), unknown("2024-13-02 03:04:05"));
        assert_eq!(ts("2024-01-02T03:04:05"), unknown("2024-01-02T03:04:05"));
    }

    #[test]
    fn timestamptz_is_utc_with_a_z() {
        let tz = |t| kind(&TypeKind::Timestamptz, t);
        assert_eq!(
            tz("2024-01-02 03:04:05.123456+00"),
            Kind::Timestamptz("2024-01-02T03:04:05.123456Z".into())
        );
        assert_eq!(
            tz("2024-01-02 03:04:05+02"),
            Kind::Timestamptz("2024-01-02T01:04:05Z".into())
        );
        // Crossing a day, a month and a leap day backwards and forwards.
        assert_eq!(
            tz("2024-03-01 01:00:00.5+05:30"),
            Kind::Timestamptz("2024-02-29T19:30:00.5Z".into())
        );
        assert_eq!(
            tz("2023-12-31 23:00:00-08"),
            Kind::Timestamptz("2024-01-01T07:00:00Z".into())
        );
        assert_eq!(
            tz("1900-01-01 00:00:00+00:09:21"),
            Kind::Timestamptz("1899-12-31T23:50:39Z".into())
        );
        assert_eq!(
            tz("0044-03-15 12:00:00+00 BC"),
            Kind::Timestamptz("-0043-03-15T12:00:00Z".into())
        );
        assert_eq!(
            tz("0001-01-01 00:30:00+01 BC"),
            Kind::Timestamptz("-0001-12-31T23:30:00Z".into())
        );
        assert_eq!(tz("infinity"), Kind::Timestamptz("infinity".into()));
        assert_eq!(tz("-infinity"), Kind::Timestamptz("-infinity".into()));
        assert_eq!(tz("2024-01-02 03:04:05"), unknown("2024-01-02 03:04:05"));
    }

    #[test]
    fn civil_day_arithmetic_round_trips() {
        let epoch = Date {
            year: 1970,
            month: 1,
            day: 1,
        };
        assert_eq!(epoch.to_days(), 0);
        for days in (-2_500_000..110_000_000).step_by(997) {
            assert_eq!(Date::from_days(days).to_days(), days);
        }
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(
            kind(&TypeKind::Date, "2024-01-02"),
            Kind::Date("2024-01-02".into())
        );
        assert_eq!(
            kind(&TypeKind::Date, "0044-03-15 BC"),
            Kind::Date("-0043-03-15".into())
        );
        assert_eq!(
            kind(&TypeKind::Date, "4713-01-01 BC"),
            Kind::Date("-4712-01-01".into())
        );
        assert_eq!(
            kind(&TypeKind::Date, "infinity"),
            Kind::Date("infinity".into())
        );
        assert_eq!(
            kind(&TypeKind::Date, "-infinity"),
            Kind::Date("-infinity".into())
        );
        assert_eq!(kind(&TypeKind::Date, "01/02/2024"), unknown("01/02/2024"));

        for t in ["03:04:05", "03:04:05.123456", "24:00:00", "00:00:00"] {
            assert_eq!(kind(&TypeKind::Time, t), Kind::Time(t.into()));
        }
        assert_eq!(kind(&TypeKind::Time, "3:04"), unknown("3:04"));

        let timetz = |t| kind(&TypeKind::Timetz, t);
        assert_eq!(
            timetz("03:04:05.123+02"),
            Kind::Timetz("03:04:05.123+02:00".into())
        );
        assert_eq!(timetz("03:04:05-08"), Kind::Timetz("03:04:05-08:00".into()));
        assert_eq!(
            timetz("03:04:05+05:30"),
            Kind::Timetz("03:04:05+05:30".into())
        );
        assert_eq!(
            timetz("03:04:05+05:30:15"),
            Kind::Timetz("03:04:05+05:30:15".into())
        );
        assert_eq!(timetz("03:04:05+00"), Kind::Timetz("03:04:05+00:00".into()));
        assert_eq!(timetz("03:04:05"), unknown("03:04:05"));
        assert_eq!(timetz("03:04:05+2"), unknown("03:04:05+2"));
    }

    #[test]
    fn arrays_of_integers_with_nulls() {
        let ints = array_of(TypeKind::Int);
        assert_eq!(
            parse_text(&ints, "{1,2,NULL}"),
            list(vec![int(1), int(2), Value::null()])
        );
        assert_eq!(parse_text(&ints, "{}"), list(vec![]));
        assert_eq!(parse_text(&ints, "{NULL}"), list(vec![Value::null()]));
        assert_eq!(
            parse_text(&ints, "{-9223372036854775808,9223372036854775807}"),
            list(vec![int(i64::MIN), int(i64::MAX)])
        );
        assert_eq!(
            parse_text(&ints, " { 1 , null ,\t3 } "),
            list(vec![int(1), Value::null(), int(3)])
        );
    }

    #[test]
    fn arrays_of_quoted_text() {
        let texts = array_of(TypeKind::Text);
        // What Postgres 15 prints for array['a,b','c"d',NULL,'NULL','x\y','{}',' sp ','']
        assert_eq!(
            parse_text(
                &texts,
                r#"{"a,b","c\"d",NULL,"NULL","x\\y","{}"," sp ",""}"#
            ),
            list(vec![
                text("a,b"),
                text("c\"d"),
                Value::null(),
                text("NULL"),
                text("x\\y"),
                text("{}"),
                text(" sp "),
                text(""),
            ])
        );
        assert_eq!(
            parse_text(&texts, r#"{é,"}",a\,b,\NULL,"\\"}"#),
            list(vec![
                text("é"),
                text("}"),
                text("a,b"),
                text("NULL"),
                text("\\"),
            ])
        );
    }

    #[test]
    fn multi_dimensional_and_decorated_arrays() {
        let ints = array_of(TypeKind::Int);
        assert_eq!(
            parse_text(&ints, "{{1,2},{3,4}}"),
            list(vec![list(vec![int(1), int(2)]), list(vec![int(3), int(4)])])
        );
        assert_eq!(
            parse_text(&ints, "{{NULL}}"),
            list(vec![list(vec![Value::null()])])
        );
        assert_eq!(
            parse_text(&ints, "[0:2]={1,2,3}"),
            list(vec![int(1), int(2), int(3)])
        );
        assert_eq!(
            parse_text(&ints, "[-1:0][1:1]={{1},{2}}"),
            list(vec![list(vec![int(1)]), list(vec![int(2)])])
        );
    }

    #[test]
    fn array_elements_are_typed_by_their_element_kind() {
        let tstz = array_of(TypeKind::Timestamptz);
        assert_eq!(
            parse_text(&tstz, r#"{"2024-01-02 03:04:05+00",NULL}"#),
            list(vec![
                Value::from(Kind::Timestamptz("2024-01-02T03:04:05Z".into())),
                Value::null()
            ])
        );
        let jsonb = array_of(TypeKind::Json);
        assert_eq!(
            parse_text(&jsonb, r#"{"{\"a\": 1}"}"#),
            list(vec![Value::from(Kind::Json(r#"{"a": 1}"#.into()))])
        );
        let bytea = array_of(TypeKind::Bytea);
        assert_eq!(
            parse_text(&bytea, r#"{"\\x00ff"}"#),
            list(vec![Value::from(Kind::Bytes(vec![0, 0xff]))])
        );
        let floats = array_of(TypeKind::Float);
        let Some(Kind::Array(parsed)) = parse_text(&floats, "{NaN,-0,Infinity}").kind else {
            panic!("not an array");
        };
        assert!(matches!(parsed.elements[0].kind, Some(Kind::Double(d)) if d.is_nan()));
        assert!(matches!(parsed.elements[1].kind, Some(Kind::Double(d)) if d.is_sign_negative()));
        let boxes = TypeKind::Array {
            element: Box::new(TypeKind::Unknown),
            delimiter: ';',
        };
        assert_eq!(
            parse_text(&boxes, "{(3,4),(1,2);(1,1),(0,0)}"),
            list(vec![
                Value::from(unknown("(3,4),(1,2)")),
                Value::from(unknown("(1,1),(0,0)")),
            ])
        );
    }

    #[test]
    fn malformed_arrays_fall_back_to_unknown_text() {
        let ints = array_of(TypeKind::Int);
        for t in [
            "", "{", "}", "{1,2", "{1,,2}", "{,}", "{\"a}", "{1}x", "1,2", "[0:1]{1}", "{1\"2}",
            "{{1}", "{1,{2}",
        ] {
            assert_eq!(kind(&ints, t), unknown(t), "{t:?}");
        }
        // An element that does not fit its kind is kept as text in place.
        assert_eq!(
            parse_text(&ints, "{1,x}"),
            list(vec![int(1), Value::from(unknown("x"))])
        );
    }

    #[test]
    fn no_input_panics() {
        let kinds = [
            TypeKind::Bool,
            TypeKind::Int,
            TypeKind::Float,
            TypeKind::Numeric,
            TypeKind::Bytea,
            TypeKind::Timestamp,
            TypeKind::Timestamptz,
            TypeKind::Date,
            TypeKind::Time,
            TypeKind::Timetz,
            TypeKind::Interval,
            TypeKind::Uuid,
            array_of(TypeKind::Text),
            array_of(array_of(TypeKind::Timestamptz)),
        ];
        let inputs = [
            "",
            " ",
            "é",
            "\\",
            "\\x",
            "{",
            "{\"",
            "{\\",
            "[",
            "[=",
            "-",
            "+",
            "0000-00-00",
            "9999999999999999999999-01-01",
            "9223372036854775807-01-01 00:00:00+01",
            "2024-01-02 ",
            "2024-01-02 03:04:05+",
            "2024-01-02 03:04:05+99:99:99",
            "00:00:00.",
            "24:00:00+",
            "{é,\"é\\é\"}",
            "{{{{}}}}",
            "éé-é-é",
            "2024-é1-02",
        ];
        for kind in &kinds {
            for input in inputs {
                let _ = parse_text(kind, input);
            }
        }
    }
}
