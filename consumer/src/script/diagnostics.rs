//! Compile errors as problems that name the line and column of the user's text (also through
//! the shorthand translation) and say how to fix them.

use super::*;

/// How byte offsets in the compiled text map to the user's text.
pub(super) enum Positions<'a> {
    /// The user's text was compiled as is.
    Direct,
    /// A shorthand filter was translated first.
    Translated(&'a shorthand::Translation),
}

impl Positions<'_> {
    fn original(&self, offset: usize) -> usize {
        match self {
            Positions::Direct => offset,
            Positions::Translated(t) => t.original_offset(offset),
        }
    }
}

/// One problem per compile error, each with the position of its primary label.
pub(super) fn problems(
    path: &str,
    source: &str,
    diagnostics: &DiagnosticList,
    positions: &Positions<'_>,
    stage: Stage,
) -> Vec<Problem> {
    diagnostics
        .iter()
        .filter(|d| d.is_problem())
        .map(|d| problem(path, source, d, positions, stage))
        .collect()
}

fn problem(
    path: &str,
    source: &str,
    diagnostic: &Diagnostic,
    positions: &Positions<'_>,
    stage: Stage,
) -> Problem {
    let primary = diagnostic
        .labels
        .iter()
        .find(|l| l.primary)
        .or_else(|| diagnostic.labels.first());
    let mut message = format!("{} (E{:03})", diagnostic.message, diagnostic.code);
    if let Some(label) = primary {
        let (line, column) = line_column(source, positions.original(label.span.start()));
        message = format!("line {line}, column {column}: {message}");
        if !label.message.is_empty() && label.message != diagnostic.message {
            message.push_str(": ");
            message.push_str(&label.message);
        }
    }
    Problem::new(path, message, fix(diagnostic, stage))
}

/// What to do about a compile error: our advice for the common errors, then the compiler's own
/// suggestions, then where VRL documents the error.
fn fix(diagnostic: &Diagnostic, stage: Stage) -> String {
    let mut parts = Vec::new();
    match diagnostic.code {
        // unhandled error, unhandled fallible assignment, fallible argument
        100 | 103 | 630 => parts.push(
            "handle the error: add `!` to the fallible function call to fail the event when \
             it fails (e.g. `to_int!(.record.qty)`), or give a fallback with `??` (e.g. \
             `to_int(.record.qty) ?? 0`)"
                .to_owned(),
        ),
        // call to undefined function
        105 => parts.push(format!(
            "use a function of VRL's standard library; functions that reach outside the event \
             ({}) are not available to scripts",
            EXCLUDED_FUNCTIONS.join(", ")
        )),
        // mutation of read-only value
        315 if stage == Stage::Filter => parts.push(
            "a filter only reads the event: change the document in `transform` instead".to_owned(),
        ),
        _ => {}
    }
    let context: Vec<&str> = diagnostic
        .labels
        .iter()
        .filter(|l| !l.primary && !l.message.is_empty())
        .map(|l| l.message.as_str())
        .collect();
    if !context.is_empty() {
        parts.push(context.join(" "));
    }
    parts.extend(suggestions(&diagnostic.notes));
    if parts.is_empty() {
        parts.push(format!("correct the {stage}"));
    }
    let docs = if diagnostic.code == 0 {
        format!("see {VRL_DOCS}")
    } else {
        Note::SeeCodeDocs(diagnostic.code).to_string()
    };
    format!("{}; {docs}", parts.join("; "))
}

/// The compiler's notes as one line each: hints, and "try: …" solutions with their code lines.
fn suggestions(notes: &[Note]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut code: Vec<&str> = Vec::new();
    let flush = |out: &mut Vec<String>, code: &mut Vec<&str>| {
        if let Some(last) = out.last_mut()
            && !code.is_empty()
        {
            last.push_str(&format!(": `{}`", code.join("; ")));
        }
        code.clear();
    };
    for note in notes {
        match note {
            Note::Basic(text) if text.trim_start().starts_with("try:") => {
                flush(&mut out, &mut code);
                out.push(text.trim().to_owned());
            }
            Note::Basic(text) if !text.trim().is_empty() => code.push(text.trim()),
            Note::Hint(_) | Note::Example(_) | Note::CoerceValue | Note::UserErrorMessage(_) => {
                flush(&mut out, &mut code);
                out.push(note.to_string());
            }
            _ => {}
        }
    }
    flush(&mut out, &mut code);
    out
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}
