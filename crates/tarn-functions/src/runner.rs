//! [`Functions`]: the deployed module, the engine threads, and the call
//! loop.
//!
//! A call runs on an engine thread against the current data; its reads
//! and writes are submitted as one transaction. A conflict (something it
//! read was overtaken) runs it again on fresh data, at once the first
//! time and then after a growing, jittered pause, up to
//! `max_reruns`. A call with an id first looks for its outcome under
//! `$sys/calls/<id>`; if there is none, the outcome is written there in
//! the same transaction as the call's writes, with a read of that path
//! as absent, so two runs of one id can never both commit. The answer is
//! given once the commit is durable.
//!
//! Modules live in the tree too: `$sys/module` is `{version, functions,
//! deployed_ms}` of the current one and `$sys/modules/<version>` keeps
//! each version's source, so a restarted server serves what was
//! deployed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tarn_core::{Key, Path, PathLimits, Read, Rejection, Time, Txn, TxnError, Value, Write};
use tarn_store::db::wall_ms;
use tarn_store::{CommitError, Db};

use crate::sandbox::{Compiled, Env, RunCall, RunOutput, Sandbox};
use crate::stats::{FunctionStats, Sample, Stats};
use crate::{CallError, DeployError, FunctionLimits};

/// A call to run.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// The exported function's name.
    pub function: String,
    /// Its arguments (any JSON value).
    pub args: Value,
    /// The caller's id for this call: a repeat is answered from the
    /// stored outcome and never runs again. Without one the call has no
    /// stored outcome (it cannot be retried safely).
    pub call_id: Option<String>,
    /// `ctx.auth`: the caller.
    pub auth: Value,
}

impl Call {
    /// A call by an anonymous caller.
    pub fn new(function: impl Into<String>, args: Value, call_id: Option<String>) -> Call {
        Call {
            function: function.into(),
            args,
            call_id,
            auth: anonymous(),
        }
    }
}

/// `ctx.auth` of a caller without a token: `{uid: null, roles: ["guest"]}`.
pub fn anonymous() -> Value {
    Value::Object(
        [
            (Arc::from("uid"), Value::Null),
            (
                Arc::from("roles"),
                Value::Array(Arc::from(vec![Value::str("guest")])),
            ),
        ]
        .into_iter()
        .collect(),
    )
}

/// A call's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// What the function returned.
    pub result: Value,
    /// The commit time of its writes (and of its stored outcome); `None`
    /// for a call without an id that wrote nothing.
    pub time: Option<Time>,
    /// Times the function was run again after a conflict.
    pub reruns: u32,
    /// True when answered from the stored outcome of an earlier call with
    /// the same id, without running.
    pub replayed: bool,
    /// The log sequence number made durable before answering.
    pub lsn: u64,
    /// Whether the call's commit reached any watch: a server that queues
    /// watch changes before answers waits for those (`Hub::routed`).
    pub watched: bool,
}

/// The result of a deploy.
#[derive(Clone, Debug, PartialEq)]
pub struct Deployed {
    /// The new version.
    pub version: u64,
    /// Its exported functions.
    pub functions: Vec<String>,
}

/// The deployed module.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleInfo {
    /// Its version.
    pub version: u64,
    /// Its exported functions.
    pub functions: Vec<String>,
    /// Its source.
    pub source: Arc<str>,
}

/// A decided call, not yet durable.
struct Done {
    outcome: Result<Value, CallError>,
    time: Option<Time>,
    lsn: u64,
    reruns: u32,
    replayed: bool,
    watched: bool,
}

impl Done {
    fn answer(self) -> Result<Answer, CallError> {
        Ok(Answer {
            result: self.outcome?,
            time: self.time,
            reruns: self.reruns,
            replayed: self.replayed,
            lsn: self.lsn,
            watched: self.watched,
        })
    }
}

struct Job {
    call: Call,
    reply: tokio::sync::oneshot::Sender<Result<Done, CallError>>,
}

/// What the engine threads and the API share.
struct Shared {
    env: Arc<Env>,
    limits: FunctionLimits,
    module: RwLock<Option<Arc<Compiled>>>,
    pending: AtomicUsize,
    stats: Stats,
    deploying: Mutex<()>,
    /// Stored outcomes by commit time (ms), oldest first: what the
    /// sweeper deletes once past the retention.
    outcomes: Mutex<std::collections::VecDeque<(u64, String)>>,
    /// Every run holds it shared, from the run to its commit decision; a
    /// call overtaken [`ALONE_AFTER`] times in a row holds it alone, so
    /// that no other function call can overtake it again. Without it, a
    /// run slower than its peers (a loaded machine, a preempted thread)
    /// can lose to them until `max_reruns`.
    gate: parking_lot::RwLock<()>,
}

/// Reruns after which a call runs alone (see [`Shared::gate`]).
const ALONE_AFTER: u32 = 3;

impl Shared {
    fn module(&self) -> Option<Arc<Compiled>> {
        self.module
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The app's functions: deploy, call, diagnostics.
pub struct Functions {
    shared: Arc<Shared>,
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    /// Dropping it stops the sweeper.
    stop_sweeper: Option<Sender<()>>,
}

const SYS: &str = "$sys";

fn sys_path(rest: &[&str], paths: &PathLimits) -> Result<Path, String> {
    let mut keys = Vec::with_capacity(rest.len() + 1);
    for k in std::iter::once(&SYS).chain(rest) {
        keys.push(Key::new(k, paths).map_err(|e| e.to_string())?);
    }
    Path::from_keys(keys, paths).map_err(|e| e.to_string())
}

impl Functions {
    /// Starts the engines over `db` and loads the module deployed there,
    /// if any. A stored module that no longer compiles is logged and not
    /// served.
    pub fn open(db: Arc<Db>, limits: FunctionLimits) -> Result<Functions, CallError> {
        let (config, _) = db
            .peek(|e| e.config().clone())
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        let env = Arc::new(Env {
            db,
            paths: config.paths,
            max_reads: config.txns.max_reads,
            max_writes: config.txns.max_writes,
            max_nesting: config.values.max_nesting,
            max_bytes: config.txns.max_bytes,
            max_value_bytes: config.values.max_value_bytes,
        });
        let shared = Arc::new(Shared {
            env,
            limits,
            module: RwLock::new(None),
            pending: AtomicUsize::new(0),
            stats: Stats::default(),
            deploying: Mutex::new(()),
            outcomes: Mutex::new(std::collections::VecDeque::new()),
            gate: parking_lot::RwLock::new(()),
        });
        load_outcomes(&shared)?;
        let stored = load_module(&shared)?;
        if let Some((version, source)) = stored {
            match compile(&source, version, limits) {
                Ok(compiled) => {
                    *shared.module.write().unwrap_or_else(|p| p.into_inner()) =
                        Some(Arc::new(compiled));
                }
                Err(e) => tracing::error!(
                    "the deployed module (version {version}) does not load: {e}; deploy a fixed one"
                ),
            }
        }
        let engines = if limits.engines == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            limits.engines
        };
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let mut threads = Vec::with_capacity(engines);
        for i in 0..engines {
            let (shared, rx) = (Arc::clone(&shared), rx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("tarn-fn-{i}"))
                // QuickJS's own stack limit must bind before the thread's.
                .stack_size(engine_stack(&limits))
                .spawn(move || engine_loop(&shared, &rx))
                .map_err(|e| CallError::Internal(format!("starting an engine thread: {e}")))?;
            threads.push(thread);
        }
        let (stop_sweeper, stopped) = crossbeam_channel::bounded::<()>(0);
        let sweeper_shared = Arc::clone(&shared);
        let sweeper = std::thread::Builder::new()
            .name("tarn-fn-outcomes".into())
            .spawn(move || sweep_loop(&sweeper_shared, &stopped))
            .map_err(|e| CallError::Internal(format!("starting the outcome sweeper: {e}")))?;
        threads.push(sweeper);
        Ok(Functions {
            shared,
            jobs: Some(tx),
            threads,
            stop_sweeper: Some(stop_sweeper),
        })
    }

    /// Checks `source` (it must compile and its top-level code must run),
    /// stores it as the next version and serves it. On error the current
    /// module keeps serving.
    pub fn deploy(&self, source: &str) -> Result<Deployed, DeployError> {
        let shared = &self.shared;
        let _one_at_a_time = shared.deploying.lock().unwrap_or_else(|p| p.into_inner());
        let len = serde_json::to_string(source).map_or(usize::MAX, |s| s.len());
        let max = shared.env.max_value_bytes;
        if len > max {
            return Err(DeployError::TooLarge { len, max });
        }
        let paths = &shared.env.paths;
        let internal = |e: String| DeployError::Unavailable(e);
        let current = sys_path(&["module"], paths).map_err(internal)?;
        let (observed, _) = shared
            .env
            .db
            .peek(|e| e.store().get(&current))
            .map_err(|e| DeployError::Unavailable(e.to_string()))?;
        let version = observed
            .value
            .as_ref()
            .and_then(|v| field(v, "version"))
            .and_then(|v| match v {
                Value::Int(i) => u64::try_from(*i).ok(),
                _ => None,
            })
            .unwrap_or(0)
            + 1;
        let compiled = compile(source, version, shared.limits)?;
        let functions: Vec<String> = compiled.functions.iter().cloned().collect();
        let now = wall_ms();
        let record = obj(&[
            (
                "version",
                Value::Int(i64::try_from(version).unwrap_or(i64::MAX)),
            ),
            (
                "deployed_ms",
                Value::Int(i64::try_from(now).unwrap_or(i64::MAX)),
            ),
            (
                "functions",
                Value::Array(functions.iter().map(|f| Value::str(f)).collect()),
            ),
        ]);
        let versioned = sys_path(&["modules", &version.to_string()], paths).map_err(internal)?;
        let txn = Txn::new(
            vec![Read::value(current.clone(), observed.seen)],
            vec![
                Write::Set {
                    path: current,
                    value: record,
                },
                Write::Set {
                    path: versioned,
                    value: obj(&[
                        ("source", Value::str(source)),
                        (
                            "deployed_ms",
                            Value::Int(i64::try_from(now).unwrap_or(i64::MAX)),
                        ),
                    ]),
                },
            ],
        );
        match shared.env.db.commit(txn) {
            Ok(_) => {}
            Err(CommitError::Txn(TxnError::Rejected(_))) => return Err(DeployError::Raced),
            Err(e) => return Err(DeployError::Unavailable(e.to_string())),
        }
        *shared.module.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(compiled));
        tracing::info!(
            "deployed module version {version}: {}",
            functions.join(", ")
        );
        Ok(Deployed { version, functions })
    }

    /// The module being served.
    pub fn module(&self) -> Option<ModuleInfo> {
        self.shared.module().map(|m| ModuleInfo {
            version: m.version,
            functions: m.functions.iter().cloned().collect(),
            source: Arc::clone(&m.source),
        })
    }

    /// Diagnostics of every function called since start.
    pub fn stats(&self) -> Vec<FunctionStats> {
        self.shared.stats.snapshot()
    }

    /// Calls queued or running.
    pub fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::Relaxed)
    }

    fn enqueue(
        &self,
        call: Call,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Done, CallError>>, CallError> {
        let max = self.shared.limits.max_pending_calls;
        let before = self.shared.pending.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            self.shared.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(CallError::Busy(before));
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        let sent = self
            .jobs
            .as_ref()
            .map(|jobs| jobs.send(Job { call, reply }).is_ok());
        if sent != Some(true) {
            self.shared.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(CallError::Internal("the engines have stopped".into()));
        }
        Ok(rx)
    }

    /// Runs `call` on an engine thread; answers once its commit is
    /// durable.
    pub async fn call(&self, call: Call) -> Result<Answer, CallError> {
        let rx = self.enqueue(call)?;
        let done = rx
            .await
            .map_err(|_| CallError::Internal("the engine thread ended".into()))??;
        self.shared
            .env
            .db
            .durable(done.lsn)
            .await
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        done.answer()
    }

    /// [`Functions::call`] for threads that may block.
    pub fn call_blocking(&self, call: Call) -> Result<Answer, CallError> {
        let rx = self.enqueue(call)?;
        let done = rx
            .blocking_recv()
            .map_err(|_| CallError::Internal("the engine thread ended".into()))??;
        self.shared
            .env
            .db
            .wait(done.lsn)
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        done.answer()
    }

    /// An engine owned by the calling thread, for callers that run calls
    /// themselves (the in-process benchmark): no hand-off to an engine
    /// thread.
    pub fn local_engine(&self) -> LocalEngine {
        LocalEngine {
            shared: Arc::clone(&self.shared),
            sandbox: None,
        }
    }
}

impl Functions {
    /// Stops the engines and the sweeper and waits for them: a call
    /// running now finishes first (at most the time limit).
    pub fn close(mut self) {
        self.jobs = None;
        self.stop_sweeper = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Functions {
    fn drop(&mut self) {
        // Closing the queue ends each engine after its current call, and
        // the sweeper at once. They are not joined: the last reference may
        // be dropped on an async thread, which must not block; a call
        // that ends after this is answered to no one.
        self.jobs = None;
        self.stop_sweeper = None;
        self.threads.clear();
    }
}

/// An engine run on the caller's thread (see [`Functions::local_engine`]).
pub struct LocalEngine {
    shared: Arc<Shared>,
    sandbox: Option<Sandbox>,
}

impl LocalEngine {
    /// Runs `call` here and decides its commit; returns the answer and
    /// the log sequence number that must be durable before it is shown.
    /// (Call [`LocalEngine::prepare`] between calls, as engine threads do
    /// while idle; otherwise the instance is made within the call.)
    pub fn decide(&mut self, call: &Call) -> Result<(Answer, u64), CallError> {
        refresh(&self.shared, &mut self.sandbox);
        let done = run_call(&self.shared, self.sandbox.as_mut(), call)?;
        let lsn = done.lsn;
        Ok((done.answer()?, lsn))
    }

    /// Makes the next call's fresh module instance.
    pub fn prepare(&mut self) -> Result<(), CallError> {
        refresh(&self.shared, &mut self.sandbox);
        match self.sandbox.as_mut() {
            Some(s) => s.prepare(),
            None => Err(CallError::NoModule),
        }
    }

    /// Runs `call` here and waits until it is durable.
    pub fn call(&mut self, call: &Call) -> Result<Answer, CallError> {
        let _ = self.prepare();
        let (answer, lsn) = self.decide(call)?;
        self.shared
            .env
            .db
            .wait(lsn)
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        Ok(answer)
    }
}

/// Brings an engine's sandbox to the current module (a new one after a
/// deploy, or when the old one is worn).
fn refresh(shared: &Shared, sandbox: &mut Option<Sandbox>) {
    let current = shared.module();
    let stale = match (sandbox.as_ref(), current.as_ref()) {
        (Some(s), Some(m)) => s.module().version != m.version || s.worn(),
        (None, Some(_)) => true,
        (_, None) => false,
    };
    if stale && let Some(module) = current {
        *sandbox = None;
        match Sandbox::new(module, shared.limits) {
            Ok(s) => *sandbox = Some(s),
            Err(e) => tracing::error!("starting a function engine: {e}"),
        }
    }
}

fn engine_loop(shared: &Shared, jobs: &Receiver<Job>) {
    let mut sandbox: Option<Sandbox> = None;
    loop {
        // Between calls: the next instance is made while idle.
        refresh(shared, &mut sandbox);
        if let Some(s) = sandbox.as_mut()
            && let Err(e) = s.prepare()
        {
            tracing::warn!("preparing a module instance: {e}");
        }
        let Ok(job) = jobs.recv() else {
            return;
        };
        refresh(shared, &mut sandbox);
        // A bug in a native method must not take the engine with it: the
        // call fails and the engine starts over with a fresh sandbox.
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_call(shared, sandbox.as_mut(), &job.call)
        }))
        .unwrap_or_else(|_| {
            sandbox = None;
            Err(CallError::Internal(
                "the function engine failed on this call and was restarted".into(),
            ))
        });
        shared.pending.fetch_sub(1, Ordering::AcqRel);
        let _ = job.reply.send(done);
    }
}

/// The path of a call id's stored outcome.
fn outcome_path(call_id: &str, paths: &PathLimits) -> Result<Path, CallError> {
    sys_path(&["calls", call_id], paths).map_err(|e| {
        CallError::BadCall(format!(
            "the call id {call_id:?} cannot be used: {e} (a call id is one path key: 1 to 256 bytes, no '/')"
        ))
    })
}

/// A fresh id for a call that came without one: seeds its generator.
fn fresh_call_id() -> String {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("~{}.{n}", wall_ms())
}

/// What a call id's outcome path holds: the stored outcome, as the
/// answer, or the version of its absence, for the transaction's read.
enum Stored {
    Answer(Done),
    Absent(Time),
}

fn stored(shared: &Shared, at: &Path, call: &Call) -> Result<Stored, CallError> {
    let (observed, lsn) = shared
        .env
        .db
        .peek(|e| e.store().get(at))
        .map_err(|e| CallError::Unavailable(e.to_string()))?;
    Ok(match observed.value {
        Some(outcome) => Stored::Answer(replay(&outcome, observed.seen, lsn, call)),
        None => Stored::Absent(observed.seen),
    })
}

/// After a conflict: the outcome of a run of the same id that overtook
/// this one, or another run (after the backoff, with the outcome path's
/// version read again), or `conflict` past `max_reruns`.
enum Next {
    Answer(Done),
    Rerun(Time),
    GiveUp,
}

fn after_conflict(
    shared: &Shared,
    at: Option<&Path>,
    call: &Call,
    seed: &str,
    reruns: &mut u32,
) -> Result<Next, CallError> {
    let gave_up = *reruns >= shared.limits.max_reruns;
    if !gave_up {
        *reruns += 1;
        backoff(seed, *reruns);
    }
    Ok(match at.map(|at| stored(shared, at, call)).transpose()? {
        Some(Stored::Answer(done)) => Next::Answer(done),
        _ if gave_up => Next::GiveUp,
        Some(Stored::Absent(seen)) => Next::Rerun(seen),
        None => Next::Rerun(Time::ZERO),
    })
}

fn run_call(
    shared: &Shared,
    sandbox: Option<&mut Sandbox>,
    call: &Call,
) -> Result<Done, CallError> {
    let env = &shared.env;
    let db = &env.db;
    let unavailable = |e: tarn_store::StoreError| CallError::Unavailable(e.to_string());
    let outcome_at = match &call.call_id {
        Some(id) => Some(outcome_path(id, &env.paths)?),
        None => None,
    };
    // A call that already ran is answered even if the module changed
    // since (or this engine cannot run anything).
    let mut outcome_seen = match &outcome_at {
        Some(at) => match stored(shared, at, call)? {
            Stored::Answer(done) => return Ok(done),
            Stored::Absent(seen) => seen,
        },
        None => Time::ZERO,
    };
    let module = shared.module().ok_or(CallError::NoModule)?;
    if !module.functions.contains(&call.function) {
        return Err(CallError::UnknownFunction {
            name: call.function.clone(),
            version: module.version,
        });
    }
    let sandbox = sandbox.ok_or_else(|| {
        CallError::Internal("the function engine could not start (see the server log)".into())
    })?;
    let seed = match &call.call_id {
        Some(id) => id.clone(),
        None => fresh_call_id(),
    };
    let started = Instant::now();
    let mut reruns = 0u32;
    loop {
        let turn = if reruns >= ALONE_AFTER {
            (None, Some(shared.gate.write()))
        } else {
            (Some(shared.gate.read()), None)
        };
        let RunOutput { result, buffer } = sandbox.run(
            env,
            &RunCall {
                function: &call.function,
                args: &call.args,
                call_id: &seed,
                now_ms: wall_ms(),
                auth: &call.auth,
            },
        );
        let (reads, writes, read_lsn) = (buffer.reads(), buffer.writes(), buffer.lsn);
        let sample = |error: bool, reruns: u32| Sample {
            function: &call.function,
            time: started.elapsed(),
            reads,
            writes,
            reruns,
            error,
        };
        if let Err(e) = &result
            && !e.is_outcome()
        {
            shared.stats.record(sample(true, reruns));
            return Err(e.clone());
        }
        // The result must fit in one stored value as JSON text, whether or
        // not this call stores it: the same call answers the same way with
        // and without an id. The text is what an outcome stores.
        let result = result.and_then(|v| {
            let json = serde_json::to_string(&v).unwrap_or_else(|_| "null".into());
            let len = stored_len(&json);
            if len > env.max_value_bytes {
                Err(CallError::BadReturn(format!(
                    "the return value is {len} bytes as stored JSON text; the limit is {} (limits.max_value_bytes)",
                    env.max_value_bytes
                )))
            } else {
                Ok((v, json))
            }
        });
        let mut txn = if result.is_ok() {
            buffer.into_txn()
        } else {
            buffer.into_reads()
        };
        if let Some(at) = &outcome_at {
            txn.reads.push(Read::value(at.clone(), outcome_seen));
            txn.writes.push(Write::Set {
                path: at.clone(),
                value: outcome_record(
                    &call.function,
                    result.as_ref().map(|(_, json)| json.as_str()),
                ),
            });
        }
        let result = result.map(|(v, _)| v);
        // For a stored failure, if the writes turn out not to commit.
        let reads = outcome_at.as_ref().map(|_| txn.reads.clone());
        match db.submit(txn) {
            Ok(pending) => {
                shared.stats.record(sample(result.is_err(), reruns));
                if let Some(id) = &call.call_id {
                    remember_outcome(shared, pending.commit.time.ms, id);
                }
                let time = (!pending.commit.changes.is_empty()).then_some(pending.commit.time);
                return Ok(Done {
                    outcome: result,
                    time,
                    lsn: pending.lsn.max(read_lsn),
                    reruns,
                    replayed: false,
                    watched: !pending.commit.deliveries.is_empty(),
                });
            }
            Err(CommitError::Txn(TxnError::Rejected(rejection))) => {
                shared.stats.rejected(&call.function);
                if matches!(rejection, Rejection::Dependency { .. }) {
                    return Err(CallError::Internal(format!(
                        "unexpected rejection: {rejection}"
                    )));
                }
            }
            Err(CommitError::Txn(TxnError::Invalid(invalid))) => {
                let error = CallError::BadWrites(invalid.to_string());
                let Some(at) = &outcome_at else {
                    shared.stats.record(sample(true, reruns));
                    return Err(error);
                };
                // The writes cannot be committed: record that as the
                // outcome, so a retry gets the same answer; with the run's
                // reads, so the failure is of a consistent view.
                let txn = Txn::new(
                    reads.unwrap_or_default(),
                    vec![Write::Set {
                        path: at.clone(),
                        value: outcome_record(&call.function, Err(&error)),
                    }],
                );
                match db.submit(txn) {
                    Ok(pending) => {
                        shared.stats.record(sample(true, reruns));
                        if let Some(id) = &call.call_id {
                            remember_outcome(shared, pending.commit.time.ms, id);
                        }
                        return Ok(Done {
                            outcome: Err(error),
                            time: Some(pending.commit.time),
                            lsn: pending.lsn,
                            reruns,
                            replayed: false,
                            watched: !pending.commit.deliveries.is_empty(),
                        });
                    }
                    // Overtaken: by a run of the same id (its outcome is
                    // the answer), or by a write to what the run read.
                    Err(CommitError::Txn(TxnError::Rejected(_))) => {}
                    Err(e) => return Err(CallError::Unavailable(e.to_string())),
                }
            }
            Err(CommitError::Store(e)) => return Err(unavailable(e)),
        }
        // Every way here is a conflict. Others run during the pause.
        drop(turn);
        match after_conflict(shared, outcome_at.as_ref(), call, &seed, &mut reruns)? {
            Next::Answer(done) => return Ok(done),
            Next::Rerun(seen) => outcome_seen = seen,
            Next::GiveUp => {
                shared.stats.record(sample(true, reruns));
                return Err(CallError::Contention { reruns });
            }
        }
    }
}

/// Pause before rerun `n` (1-based): none for the first, then 50 µs
/// doubling to at most 5 ms, times a jitter in [0.5, 1.5) drawn from the
/// call's seed, so that colliding calls spread out.
fn backoff(seed: &str, n: u32) {
    if n <= 1 {
        return;
    }
    let base = 50u64.saturating_mul(1 << (n - 2).min(7)).min(5000);
    let mut rng = crate::sandbox::SplitMix64::for_call(seed);
    for _ in 0..n {
        rng.next_u64();
    }
    let jitter = 0.5 + rng.next_f64();
    std::thread::sleep(Duration::from_micros((base as f64 * jitter) as u64));
}

/// [`Sandbox::compile`] on a thread with the engines' stack size: the
/// caller's stack may be smaller than QuickJS's configured limit.
fn compile(source: &str, version: u64, limits: FunctionLimits) -> Result<Compiled, DeployError> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("tarn-fn-compile".into())
            .stack_size(engine_stack(&limits))
            .spawn_scoped(scope, || Sandbox::compile(source, version, limits))
            .map_err(|e| DeployError::Unavailable(format!("starting the compiler thread: {e}")))?
            .join()
            .unwrap_or_else(|_| {
                Err(DeployError::Invalid {
                    message: "the module crashed the compiler".into(),
                    line: None,
                    column: None,
                })
            })
    })
}

/// An engine thread's stack: QuickJS's own limit must bind first.
fn engine_stack(limits: &FunctionLimits) -> usize {
    limits.stack_bytes.saturating_mul(4).max(8 << 20)
}

fn obj(pairs: &[(&str, Value)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (Arc::from(*k), v.clone()))
            .collect(),
    )
}

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    match v {
        Value::Object(children) => children.get(name),
        _ => None,
    }
}

/// The stored outcome of a call: `{fn, ok: "<result as JSON text>"}` or
/// `{fn, error: {code, message}}`. The result is kept as text so that
/// `null`, `{}` and arrays round-trip exactly (an empty object would be
/// absent in the tree).
fn outcome_record(function: &str, result: Result<&str, &CallError>) -> Value {
    match result {
        Ok(json) => obj(&[("fn", Value::str(function)), ("ok", Value::str(json))]),
        Err(e) => obj(&[
            ("fn", Value::str(function)),
            (
                "error",
                obj(&[
                    ("code", Value::str(e.code())),
                    ("message", Value::str(&e.to_string())),
                ]),
            ),
        ]),
    }
}

/// The length of `json` stored as a JSON string (quotes and escapes
/// included): what a stored outcome's `ok` takes.
fn stored_len(json: &str) -> usize {
    json.len() + 2 + json.bytes().filter(|b| *b == b'"' || *b == b'\\').count()
}

/// A call answered from its stored outcome.
fn replay(stored: &Value, seen: Time, lsn: u64, call: &Call) -> Done {
    let same_function = match field(stored, "fn") {
        Some(Value::String(f)) => **f == *call.function,
        _ => true,
    };
    let outcome = match (field(stored, "ok"), field(stored, "error")) {
        _ if !same_function => Err(CallError::BadCall(format!(
            "the call id {:?} was already used for another function ({}); use a new id for each call",
            call.call_id.as_deref().unwrap_or_default(),
            match field(stored, "fn") {
                Some(Value::String(f)) => f.to_string(),
                _ => String::new(),
            }
        ))),
        (Some(Value::String(json)), _) => serde_json::from_str::<Value>(json)
            .map_err(|e| CallError::Internal(format!("a stored call outcome does not parse: {e}"))),
        (_, Some(error)) => {
            let text = |k: &str| match field(error, k) {
                Some(Value::String(s)) => s.to_string(),
                _ => String::new(),
            };
            Err(CallError::Recorded {
                code: crate::static_code(&text("code")),
                message: text("message"),
            })
        }
        // `ok` absent: the function returned null.
        _ => Ok(Value::Null),
    };
    Done {
        outcome,
        time: Some(seen),
        lsn,
        reruns: 0,
        replayed: true,
        watched: false,
    }
}

/// Notes a stored outcome for the sweeper.
fn remember_outcome(shared: &Shared, ms: u64, call_id: &str) {
    shared
        .outcomes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push_back((ms, call_id.to_string()));
}

/// The outcomes stored before this start, oldest first (read once, a
/// thousand at a time so the engine lock is never held long).
fn load_outcomes(shared: &Shared) -> Result<(), CallError> {
    let paths = &shared.env.paths;
    let calls = sys_path(&["calls"], paths).map_err(CallError::Internal)?;
    let db = &shared.env.db;
    let unavailable = |e: tarn_store::StoreError| CallError::Unavailable(e.to_string());
    let (ids, _) = db.peek(|e| e.store().keys(&calls)).map_err(unavailable)?;
    let mut found = Vec::with_capacity(ids.keys.len());
    for chunk in ids.keys.chunks(1000) {
        let (times, _) = db
            .peek(|e| {
                chunk
                    .iter()
                    .filter_map(|k| {
                        let path = calls.child(k.clone(), paths).ok()?;
                        Some((e.store().get(&path).seen.ms, k.as_str().to_string()))
                    })
                    .collect::<Vec<_>>()
            })
            .map_err(unavailable)?;
        found.extend(times);
    }
    found.sort();
    *shared.outcomes.lock().unwrap_or_else(|p| p.into_inner()) = found.into();
    Ok(())
}

/// Deletes stored outcomes older than the retention, a thousand per
/// transaction, until `stop` closes.
fn sweep_loop(shared: &Shared, stop: &Receiver<()>) {
    let retention_ms =
        u64::try_from(shared.limits.outcome_retention.as_millis()).unwrap_or(u64::MAX);
    let every = (shared.limits.outcome_retention / 10)
        .clamp(Duration::from_millis(10), Duration::from_secs(10));
    let paths = shared.env.paths;
    let Ok(calls) = sys_path(&["calls"], &paths) else {
        return;
    };
    loop {
        match stop.recv_timeout(every) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let cutoff = wall_ms().saturating_sub(retention_ms);
        loop {
            let expired: Vec<(u64, String)> = {
                let mut queue = shared.outcomes.lock().unwrap_or_else(|p| p.into_inner());
                let n = queue
                    .iter()
                    .take(1000)
                    .take_while(|(ms, _)| *ms < cutoff)
                    .count();
                queue.drain(..n).collect()
            };
            if expired.is_empty() {
                break;
            }
            let mut seen = std::collections::HashSet::new();
            let writes = expired
                .iter()
                .filter(|(_, id)| seen.insert(id.as_str()))
                .filter_map(|(_, id)| {
                    let key = Key::new(id, &paths).ok()?;
                    Some(Write::Delete {
                        path: calls.child(key, &paths).ok()?,
                    })
                })
                .collect();
            if let Err(e) = shared.env.db.submit(Txn::new(Vec::new(), writes)) {
                tracing::warn!("expiring stored call outcomes: {e}");
                break;
            }
        }
    }
}

/// The current module's version and source as stored.
fn load_module(shared: &Shared) -> Result<Option<(u64, String)>, CallError> {
    let paths = &shared.env.paths;
    let current = sys_path(&["module", "version"], paths).map_err(CallError::Internal)?;
    let db = &shared.env.db;
    let version = db
        .get(&current)
        .map_err(|e| CallError::Unavailable(e.to_string()))?
        .value;
    let Some(Value::Int(version)) = version else {
        return Ok(None);
    };
    let version = u64::try_from(version).unwrap_or(0);
    let source_at = sys_path(&["modules", &version.to_string(), "source"], paths)
        .map_err(CallError::Internal)?;
    match db
        .get(&source_at)
        .map_err(|e| CallError::Unavailable(e.to_string()))?
        .value
    {
        Some(Value::String(source)) => Ok(Some((version, source.to_string()))),
        _ => {
            tracing::error!("module version {version} is current but its source is missing");
            Ok(None)
        }
    }
}
