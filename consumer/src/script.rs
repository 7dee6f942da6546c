//! The filter and transform of a sink: [VRL] programs compiled once at start and run per event.
//!
//! ```text
//!  event JSON ──► VRL value ──► filter ──false──► Filtered
//!  {action, record,                │true
//!   changes, metadata}             ▼
//!                               transform ──null──► Filtered
//!                                  │object
//!                                  ▼
//!                              Document (JSON object)
//! ```
//!
//! The VRL target (`.`) is the whole event, so scripts read `.action`, `.record.price`,
//! `.changes.price` and `.metadata.table`. A missing filter lets every event through; a missing
//! transform makes the document `.record` as is.
//!
//! # Filter
//! A VRL expression that must return a boolean: when the type checker can tell it never does, the
//! config is rejected; when it can only tell at run time, a non-boolean result fails the event. The
//! filter may not modify `.` (that is a compile error), which lets the transform reuse the same
//! target without converting the event twice.
//!
//! A filter written in the *shorthand* `column op literal` (see [`shorthand`]) is translated to
//! VRL first: `in_stock = true` becomes `.record."in_stock" == true`.
//!
//! # Transform
//! A VRL program whose value is the document: an object is written, `null` skips the event, and
//! anything else fails the event. `. = .record` followed by `del(.secret)` and `.` is a typical
//! program; so is `{ "id": .record.id, "name": upcase!(.record.name) }`.
//!
//! # Sandbox
//! Scripts get VRL's standard library compiled with the `stdlib-base` feature (no environment,
//! system, network or crypto groups), minus [`EXCLUDED_FUNCTIONS`]: those are named explicitly so
//! that a change of Cargo features elsewhere in the workspace (features are unified) cannot hand
//! scripts a function that reads files, the environment or the network. Calling one is the VRL
//! compile error "call to undefined function". Timestamps are parsed and formatted in UTC, never
//! in the machine's local zone.
//!
//! # Time limit
//! VRL has no unbounded loops (only iteration over values with `for_each` and friends), so a run
//! is bounded by the program and the event size. `transform_timeout` still bounds one event:
//! filter and transform together share one deadline, checked between VRL expressions through
//! [`Runtime::resolve_with_control`] (every [`CLOCK_EVERY`] expressions) and once more at the end.
//! A single long-running function call (say `parse_grok` on a huge string) cannot be interrupted
//! while it runs; the run fails as soon as it returns. A run that exceeds the limit is a
//! [`ScriptError`], never a partial document.
//!
//! # Values
//! JSON → VRL: objects, arrays, booleans and null map directly; strings become VRL strings;
//! numbers become integers when they fit `i64` and floats otherwise, except unsigned integers
//! above `i64::MAX`, which become strings holding the exact digits (a float would round them).
//! VRL → JSON: byte strings become strings (invalid UTF-8 replaced by U+FFFD), timestamps RFC 3339
//! strings in UTC, regexes their pattern, and floats numbers (infinities, which JSON cannot
//! hold, become null).
//!
//! # Cost
//! Compiling happens once per sink. Per event, the cost is converting the event to a VRL value
//! (most of it: every key and string is an allocation), running the program(s) and converting the
//! document back. A `Runtime` (variable storage) is kept per thread and cleared between runs.
//! Measured by `cargo bench -p sluice-consumer --bench script_cost` (release build, one core of a 2-core development
//! VM, an update event with a ten-field record): no scripts 0.4 µs, filter `price > 10` 2.0 µs,
//! a transform picking three fields 2.4 µs, both 2.4 µs per event.
//!
//! [VRL]: https://vector.dev/docs/reference/vrl/

use std::cell::RefCell;
use std::fmt;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use serde_json::{Map, Number, Value as Json};
use sluice_common::config::{Problem, SinkConfig};
use vrl::compiler::runtime::{Runtime, Terminate};
use vrl::compiler::{CompileConfig, Function, Program, TargetValue, TimeZone, TypeState};
use vrl::diagnostic::{Diagnostic, DiagnosticList, Note};
use vrl::prelude::{Bytes, NotNan};
use vrl::value::{KeyString, ObjectMap, Secrets, Value};

mod diagnostics;
mod shorthand;

use diagnostics::{Positions, problems};
#[cfg(test)]
mod tests;

/// Functions of VRL's standard library that scripts may never call, whatever features VRL was
/// built with: they read the environment, the host, files or the network, or depend on the
/// machine's configuration.
pub const EXCLUDED_FUNCTIONS: &[&str] = &[
    // environment
    "get_env_var",
    // host and system
    "get_hostname",
    "get_timezone_name",
    // read schema or descriptor files from disk
    "validate_json_schema",
    "parse_proto",
    "encode_proto",
    // may read a public-suffix list from a file
    "parse_etld",
    // network
    "http_request",
    "dns_lookup",
    "reverse_dns",
];

/// Between two reads of the clock, VRL evaluates this many expressions; reading the clock for
/// every expression would cost more than many of the expressions themselves.
pub const CLOCK_EVERY: u32 = 16;

/// Link to VRL's documentation, given in the fixes of compile errors.
const VRL_DOCS: &str = "https://vector.dev/docs/reference/vrl/";

/// The part of a sink that runs a script: in dead-letter records, which one failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Filter,
    Transform,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Filter => "filter",
            Stage::Transform => "transform",
        })
    }
}

/// A script failed on one event: the event goes to the dead-letter topic with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{stage} failed: {message}")]
pub struct ScriptError {
    pub stage: Stage,
    /// VRL's message, e.g. `function call error for "to_int" at (12:30): …`; positions are byte
    /// offsets `(start:end)` into the script.
    pub message: String,
}

impl ScriptError {
    fn new(stage: Stage, message: impl Into<String>) -> Self {
        Self {
            stage,
            message: message.into(),
        }
    }
}

/// What a sink does with one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Write this document (a JSON object).
    Document(Map<String, Json>),
    /// The filter rejected the event, or the transform returned null.
    Filtered,
}

/// The filter and transform of one sink, compiled once at start and shared across tasks.
pub struct Scripts {
    filter: Option<Compiled>,
    transform: Option<Compiled>,
    timeout: Duration,
    timezone: TimeZone,
}

/// One compiled script and the text the user wrote (for `Debug` and messages).
struct Compiled {
    program: Program,
    source: String,
}

impl fmt::Debug for Scripts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The compiled programs' Debug output is a large AST; the source says the same.
        f.debug_struct("Scripts")
            .field("filter", &self.filter.as_ref().map(|c| c.source.as_str()))
            .field(
                "transform",
                &self.transform.as_ref().map(|c| c.source.as_str()),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

thread_local! {
    /// Storage for VRL variables; cleared after every run, kept for its allocations.
    static RUNTIME: RefCell<Runtime> = RefCell::new(Runtime::default());
}

impl Scripts {
    /// Compiles `sink.filter` and `sink.transform`.
    ///
    /// # Errors
    ///
    /// Every problem of both scripts, with path `sinks[{index}].filter` or
    /// `sinks[{index}].transform`, the compiler's message with the line and column (1-based) where
    /// it applies, and a fix.
    pub fn compile(sink: &SinkConfig, index: usize) -> Result<Scripts, Vec<Problem>> {
        let functions = functions();
        let mut problems = Vec::new();

        let filter = sink.filter.as_deref().and_then(|source| {
            compile_filter(source, &functions, index)
                .map_err(|mut p| problems.append(&mut p))
                .ok()
        });
        let transform = sink.transform.as_deref().and_then(|source| {
            compile_transform(source, &functions, index)
                .map_err(|mut p| problems.append(&mut p))
                .ok()
        });

        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Scripts {
            filter,
            transform,
            timeout: sink.transform_timeout.get(),
            // "UTC" is in every tz database; the fallback (local time) is never taken.
            timezone: TimeZone::parse("UTC").unwrap_or_default(),
        })
    }

    pub fn has_filter(&self) -> bool {
        self.filter.is_some()
    }

    pub fn has_transform(&self) -> bool {
        self.transform.is_some()
    }

    /// Runs the filter (if any), then the transform (if any) on `input`, a JSON object
    /// `{"action": "insert"|"update"|"delete"|"read", "record": {…}, "changes": {…},
    /// "metadata": {…}}`. Without a transform the document is `input["record"]` as is.
    ///
    /// # Errors
    ///
    /// A script failed at run time (a fallible call failed, `abort`, a filter that did not
    /// return a boolean, a transform that returned neither an object nor null), ran longer than
    /// `transform_timeout`, or, without a transform, the event has no `record` object.
    pub fn apply(&self, input: &Json) -> Result<Verdict, ScriptError> {
        if self.filter.is_none() && self.transform.is_none() {
            return record_document(input);
        }
        let deadline = Deadline::new(self.timeout);
        let mut target = target(input);
        if let Some(filter) = &self.filter
            && !self.run_filter(filter, &mut target, &deadline)?
        {
            return Ok(Verdict::Filtered);
        }
        let Some(transform) = &self.transform else {
            return record_document(input);
        };
        match self.run(Stage::Transform, transform, &mut target, &deadline)? {
            Value::Object(object) => Ok(Verdict::Document(object_to_json(object))),
            Value::Null => Ok(Verdict::Filtered),
            other => Err(ScriptError::new(
                Stage::Transform,
                format!(
                    "transform must return an object or null, got {}",
                    other.kind_str()
                ),
            )),
        }
    }

    /// Runs only the filter (delete events need no document); `true` without a filter.
    ///
    /// # Errors
    ///
    /// As for [`Scripts::apply`], for the filter.
    pub fn passes_filter(&self, input: &Json) -> Result<bool, ScriptError> {
        let Some(filter) = &self.filter else {
            return Ok(true);
        };
        let deadline = Deadline::new(self.timeout);
        self.run_filter(filter, &mut target(input), &deadline)
    }

    fn run_filter(
        &self,
        filter: &Compiled,
        target: &mut TargetValue,
        deadline: &Deadline,
    ) -> Result<bool, ScriptError> {
        match self.run(Stage::Filter, filter, target, deadline)? {
            Value::Boolean(passes) => Ok(passes),
            other => Err(ScriptError::new(
                Stage::Filter,
                format!("filter must return a boolean, got {}", other.kind_str()),
            )),
        }
    }

    fn run(
        &self,
        stage: Stage,
        script: &Compiled,
        target: &mut TargetValue,
        deadline: &Deadline,
    ) -> Result<Value, ScriptError> {
        let mut expressions = 0u32;
        let mut control = || {
            expressions = expressions.wrapping_add(1);
            if expressions.is_multiple_of(CLOCK_EVERY) && deadline.passed() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let result = RUNTIME.with(|runtime| {
            let mut runtime = runtime.borrow_mut();
            // Also before: a panic in an earlier run may have left variables behind.
            runtime.clear();
            let result =
                runtime.resolve_with_control(target, &script.program, &self.timezone, &mut control);
            runtime.clear();
            result
        });
        match result {
            Ok(_) | Err(Terminate::Interrupted) if deadline.passed() => Err(ScriptError::new(
                stage,
                format!(
                    "took longer than the time limit of {:?} (transform_timeout)",
                    deadline.limit
                ),
            )),
            Ok(value) => Ok(value),
            Err(Terminate::Interrupted) => Err(ScriptError::new(stage, "execution interrupted")),
            Err(Terminate::Abort(error) | Terminate::Error(error)) => {
                Err(ScriptError::new(stage, error.to_string()))
            }
        }
    }
}

/// When the current event's scripts must have finished.
struct Deadline {
    /// `None` when the limit is too large for the clock: no limit in practice.
    at: Option<Instant>,
    limit: Duration,
}

impl Deadline {
    fn new(limit: Duration) -> Self {
        Self {
            at: Instant::now().checked_add(limit),
            limit,
        }
    }

    fn passed(&self) -> bool {
        self.at.is_some_and(|at| Instant::now() >= at)
    }
}

/// VRL's standard library minus [`EXCLUDED_FUNCTIONS`].
fn functions() -> Vec<Box<dyn Function>> {
    vrl::stdlib::all()
        .into_iter()
        .filter(|f| !EXCLUDED_FUNCTIONS.contains(&f.identifier()))
        .collect()
}

fn compile_filter(
    source: &str,
    functions: &[Box<dyn Function>],
    index: usize,
) -> Result<Compiled, Vec<Problem>> {
    let path = format!("sinks[{index}].filter");
    let translated = shorthand::translate(source);
    let (vrl_source, positions) = match &translated {
        Some(t) => (t.vrl.as_str(), Positions::Translated(t)),
        None => (source, Positions::Direct),
    };
    let mut config = CompileConfig::default();
    // The transform reuses the filter's target, so the filter may not change it.
    config.set_read_only();
    let result =
        vrl::compiler::compile_with_state(vrl_source, functions, &TypeState::default(), config)
            .map_err(|diagnostics| {
                problems(&path, source, &diagnostics, &positions, Stage::Filter)
            })?;

    let kind = result.program.final_type_info().result.kind().clone();
    if !kind.contains_boolean() && !kind.is_never() {
        return Err(vec![Problem::new(
            path,
            format!("the filter must return a boolean, but it returns {kind}"),
            "write a condition such as `in_stock = true` or `.record.price > 10 && \
             .action != \"delete\"`",
        )]);
    }
    Ok(Compiled {
        program: result.program,
        source: source.to_owned(),
    })
}

fn compile_transform(
    source: &str,
    functions: &[Box<dyn Function>],
    index: usize,
) -> Result<Compiled, Vec<Problem>> {
    let path = format!("sinks[{index}].transform");
    let result = vrl::compiler::compile_with_state(
        source,
        functions,
        &TypeState::default(),
        CompileConfig::default(),
    )
    .map_err(|diagnostics| {
        problems(
            &path,
            source,
            &diagnostics,
            &Positions::Direct,
            Stage::Transform,
        )
    })?;

    let kind = result.program.final_type_info().result.kind().clone();
    if !kind.contains_object() && !kind.contains_null() && !kind.is_never() {
        return Err(vec![Problem::new(
            path,
            format!("the transform must return an object or null, but it returns {kind}"),
            "end the program with the document, e.g. `{ \"id\": .record.id }` or `.` after \
             `. = .record`",
        )]);
    }
    Ok(Compiled {
        program: result.program,
        source: source.to_owned(),
    })
}

/// The event as a VRL target; metadata (`%`) starts as an empty object.
fn target(input: &Json) -> TargetValue {
    TargetValue {
        value: json_to_vrl(input),
        metadata: Value::Object(ObjectMap::new()),
        secrets: Secrets::default(),
    }
}

/// The document when there is no transform: the record, unchanged.
fn record_document(input: &Json) -> Result<Verdict, ScriptError> {
    match input.get("record") {
        Some(Json::Object(record)) => Ok(Verdict::Document(record.clone())),
        _ => Err(ScriptError::new(
            Stage::Transform,
            "the event has no record object to write",
        )),
    }
}

/// JSON → VRL, as described in the module documentation.
pub fn json_to_vrl(json: &Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => number_to_vrl(n),
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::Array(items.iter().map(json_to_vrl).collect()),
        Json::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (KeyString::from(k.as_str()), json_to_vrl(v)))
                .collect(),
        ),
    }
}

fn number_to_vrl(n: &Number) -> Value {
    if let Some(i) = n.as_i64() {
        Value::Integer(i)
    } else if n.is_u64() {
        // Above i64::MAX: a float would round it, so keep the exact digits.
        Value::from(n.to_string())
    } else {
        n.as_f64()
            .and_then(|f| NotNan::new(f).ok())
            .map_or_else(|| Value::from(n.to_string()), Value::Float)
    }
}

/// VRL → JSON, as described in the module documentation.
pub fn vrl_to_json(value: Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(b),
        Value::Integer(i) => Json::from(i),
        // `from` turns the non-finite floats JSON cannot hold into null.
        Value::Float(f) => Json::from(f.into_inner()),
        Value::Bytes(bytes) => Json::String(bytes_to_string(bytes)),
        Value::String(s) => Json::String(s.to_string()),
        Value::Regex(regex) => Json::String(regex.as_str().to_owned()),
        Value::Timestamp(ts) => Json::String(vrl::value::value::timestamp_to_string(&ts)),
        Value::Array(items) => Json::Array(items.into_iter().map(vrl_to_json).collect()),
        Value::Object(object) => Json::Object(object_to_json(object)),
    }
}

fn object_to_json(object: ObjectMap) -> Map<String, Json> {
    object
        .into_iter()
        .map(|(k, v)| (String::from(k), vrl_to_json(v)))
        .collect()
}

fn bytes_to_string(bytes: Bytes) -> String {
    match String::from_utf8(bytes.into()) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}
