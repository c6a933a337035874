//! The JavaScript sandbox: one QuickJS runtime and context (through
//! `rquickjs`), owned by one engine thread.
//!
//! - Built once per context: the built-ins (no I/O, no timers, no module
//!   loader, no `WeakRef`), `Date` and `Math.random` replaced by the
//!   call's clock and generator, then every object reachable from the
//!   global object frozen (with the common prototype methods turned into
//!   accessors, so `obj.toString = ...` on an ordinary object still works).
//! - Per call: a fresh instance of the module, prepared after the previous
//!   call, so a call never sees what another did to module state; a `ctx`
//!   whose methods read and write through the run's [`Buffer`].
//! - Limits: a deadline checked by the interrupt handler, a memory limit
//!   and a stack limit. The memory limit is the runtime's: its size after
//!   the realm and the first module instance (measured once, when the
//!   sandbox is made: measuring walks the heap), plus room for the
//!   instances it will accumulate, plus the run's allowance. Module
//!   instances are only freed with their context, so the engine replaces
//!   its sandbox once that room is used up ([`Sandbox::worn`]).

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use rquickjs::context::intrinsic;
use rquickjs::function::{Opt, This};
use rquickjs::{
    Array, Context, Ctx, Exception, Function, Module, Object, Persistent, Runtime, Value as JsValue,
};
use tarn_core::{Key, Path, PathLimits, ReadKind, Value};
use tarn_store::Db;

use crate::buffer::Buffer;
use crate::{CallError, DeployError, FunctionLimits};

/// The module's name in error positions and stacks.
pub const MODULE_NAME: &str = "app.js";

/// Most instances a context holds before the sandbox is replaced.
const MAX_INSTANCES: u32 = 2000;

/// Heap the accumulated module instances of one context may take before
/// the sandbox is replaced.
const INSTANCE_ROOM: usize = 16 << 20;

/// A deployed module, checked: it compiles and its top-level code runs.
#[derive(Debug)]
pub struct Compiled {
    /// Its deploy version (1, 2, ...).
    pub version: u64,
    /// The source.
    pub source: Arc<str>,
    /// The names of its exported functions.
    pub functions: BTreeSet<String>,
    /// The module compiled by this process's QuickJS: instances are made
    /// from it, not from the source (3x faster: no parsing per call).
    /// Never stored: the store keeps the source.
    bytecode: Arc<[u8]>,
}

/// What a run may touch, shared by every engine thread.
pub struct Env {
    /// The database read from.
    pub db: Arc<Db>,
    /// Limits on paths named by `ctx` methods.
    pub paths: PathLimits,
    /// Reads one run may make (`limits.max_txn_reads`).
    pub max_reads: usize,
    /// Writes one run may make (`limits.max_txn_writes`).
    pub max_writes: usize,
    /// Nesting of values taken from JavaScript (`limits.max_value_nesting`).
    pub max_nesting: usize,
    /// Bytes (as JSON) of the values one run may write
    /// (`limits.max_txn_bytes`).
    pub max_bytes: usize,
    /// Largest single value (`limits.max_value_bytes`): bounds arrays
    /// taken from JavaScript before they are copied.
    pub max_value_bytes: usize,
}

/// One call as the sandbox sees it.
pub struct RunCall<'a> {
    /// The exported function.
    pub function: &'a str,
    /// Its arguments.
    pub args: &'a Value,
    /// The call id (`ctx.callId`, and the seed of `ctx.random()`).
    pub call_id: &'a str,
    /// `ctx.now` and `Date.now()`, in ms since the epoch.
    pub now_ms: u64,
    /// `ctx.auth`.
    pub auth: &'a Value,
}

/// What a run did.
pub struct RunOutput {
    /// What it returned, or why it failed.
    pub result: Result<Value, CallError>,
    /// Its reads and writes.
    pub buffer: Buffer,
}

/// The state of the call in progress, reached by `ctx`'s native methods.
struct Host {
    env: Arc<Env>,
    buffer: Buffer,
    rng: SplitMix64,
    now_ms: u64,
    /// Set when the store failed under a read: the run's answer is that,
    /// whatever the function made of the exception.
    failed: Option<CallError>,
    /// Which run this is: a `ctx` carries the number of its run, and its
    /// methods refuse to act for any other.
    run: u64,
    /// Bytes of values written so far.
    bytes: usize,
}

type Shared = Rc<RefCell<Option<Host>>>;

/// The deadline of the run in progress.
#[derive(Default)]
struct Clock {
    deadline: Cell<Option<Instant>>,
    fired: Cell<bool>,
}

/// The generator behind `ctx.random()` and `Math.random()`: SplitMix64
/// seeded with the FNV-1a hash of the call id (docs/functions.md), so any
/// implementation can give the same sequence.
#[derive(Clone, Copy, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Seeded by a call id.
    pub fn for_call(call_id: &str) -> SplitMix64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in call_id.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        SplitMix64(h)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A float in `[0, 1)` from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// One engine: a runtime, its context and the module's next instance.
pub struct Sandbox {
    // Fields drop in order: the JavaScript values before the context and
    // the runtime that own them.
    next: Option<Persistent<Object<'static>>>,
    make_ctx: Persistent<Function<'static>>,
    context: Context,
    runtime: Runtime,
    module: Arc<Compiled>,
    host: Shared,
    clock: Rc<Clock>,
    instances: u32,
    max_instances: u32,
    runs: u64,
    poisoned: bool,
    limits: FunctionLimits,
}

/// Built-ins: no `WeakRef`/`FinalizationRegistry` (they observe the
/// garbage collector), no `performance`; `Eval` compiles the module.
type Intrinsics = (
    intrinsic::Eval,
    intrinsic::Promise,
    intrinsic::Json,
    intrinsic::MapSet,
    intrinsic::RegExp,
    intrinsic::RegExpCompiler,
    intrinsic::Date,
    intrinsic::TypedArrays,
);

/// Replaces the clock and the generator, makes the `ctx` prototype,
/// freezes the realm; evaluates to `makeCtx`.
const PRELUDE: &str = r#"
(function () {
  "use strict";
  const natives = globalThis.__tarn;
  delete globalThis.__tarn;
  const RealDate = Date;
  const now = natives.now;
  function Date_(...args) {
    if (new.target === undefined) return new RealDate(now()).toString();
    if (args.length === 0) return new RealDate(now());
    if (args.length === 1) return new RealDate(typeof args[0] === "string" ? parse(args[0]) : args[0]);
    return new RealDate(RealDate.UTC(...args));
  }
  Object.defineProperty(Date_, "prototype", { value: RealDate.prototype });
  Object.defineProperty(Date_, "now", { value: function now_() { return now(); } });
  Object.defineProperty(Date_, "UTC", { value: RealDate.UTC });
  Object.defineProperty(Date_, "name", { value: "Date" });
  Object.defineProperty(RealDate.prototype, "constructor", { value: Date_ });
  Object.defineProperty(globalThis, "Date", { value: Date_, writable: true, configurable: true });
  Object.defineProperty(Math, "random", { value: function random() { return natives.random(); } });

  // Local time is the machine's: make every local-time view of a date the
  // UTC one, so a call gives the same result on any server or client.
  const dp = RealDate.prototype;
  for (const name of ["FullYear", "Month", "Date", "Day", "Hours", "Minutes", "Seconds", "Milliseconds"]) {
    Object.defineProperty(dp, "get" + name, { value: dp["getUTC" + name] });
    if (name !== "Day") Object.defineProperty(dp, "set" + name, { value: dp["setUTC" + name] });
  }
  Object.defineProperty(dp, "getYear", { value: function getYear() { return this.getUTCFullYear() - 1900; } });
  Object.defineProperty(dp, "getTimezoneOffset", { value: function getTimezoneOffset() { return 0; } });
  for (const name of ["toString", "toLocaleString"]) Object.defineProperty(dp, name, { value: dp.toUTCString });
  for (const name of ["toDateString", "toLocaleDateString"]) Object.defineProperty(dp, name, { value: function () { return this.toISOString().slice(0, 10); } });
  for (const name of ["toTimeString", "toLocaleTimeString"]) Object.defineProperty(dp, name, { value: function () { return this.toISOString().slice(11, 23) + "Z"; } });
  const localForm = /^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?$/;
  const parse = (s) => RealDate.parse(typeof s === "string" && localForm.test(s) ? s + "Z" : s);
  Object.defineProperty(Date_, "parse", { value: parse });

  // Hooks the engine keeps outside any object: fixed, so no call can
  // leave code behind for the next.
  for (const name of ["prepareStackTrace", "stackTraceLimit"]) {
    if (Object.getOwnPropertyDescriptor(Error, name)) {
      Object.defineProperty(Error, name, { value: name === "stackTraceLimit" ? 10 : undefined, writable: false, configurable: false });
    }
  }

  const proto = {
    get: natives.get,
    keys: natives.keys,
    set: natives.set,
    patch: natives.patch,
    remove: natives.remove,
    random: natives.random,
  };

  // Frozen built-ins make `obj.toString = f` throw when `obj` inherits a
  // frozen `toString` (the "override mistake"): make the usual ones
  // accessors whose setter defines an own property on the target.
  const tame = (obj, names) => {
    for (const name of names) {
      const d = Object.getOwnPropertyDescriptor(obj, name);
      if (!d || !("value" in d)) continue;
      const value = d.value;
      Object.defineProperty(obj, name, {
        get() { return value; },
        set(v) {
          if (this === obj) throw new TypeError(`cannot change the built-in ${String(name)}: built-ins are frozen`);
          Object.defineProperty(this, name, { value: v, writable: true, enumerable: true, configurable: true });
        },
        enumerable: d.enumerable,
        configurable: false,
      });
    }
  };
  tame(Object.prototype, ["constructor", "toString", "valueOf", "toLocaleString", "hasOwnProperty", "isPrototypeOf", "propertyIsEnumerable"]);
  tame(Function.prototype, ["constructor", "toString"]);
  for (const E of [Error, TypeError, RangeError, SyntaxError, ReferenceError, EvalError, URIError]) {
    tame(E.prototype, ["constructor", "name", "message", "toString"]);
  }
  tame(Array.prototype, ["constructor", "toString"]);

  const seen = new Set();
  const freeze = (o) => {
    if ((typeof o !== "object" && typeof o !== "function") || o === null || seen.has(o)) return;
    seen.add(o);
    Object.freeze(o);
    for (const k of Reflect.ownKeys(o)) {
      const d = Object.getOwnPropertyDescriptor(o, k);
      if (!d) continue;
      if ("value" in d) freeze(d.value);
      if (d.get) freeze(d.get);
      if (d.set) freeze(d.set);
    }
    freeze(Object.getPrototypeOf(o));
  };
  freeze(proto);
  freeze(globalThis);
  // Built-ins only syntax reaches.
  const hidden = [
    [][Symbol.iterator](),
    new Map()[Symbol.iterator](),
    new Set()[Symbol.iterator](),
    ""[Symbol.iterator](),
    /a/g[Symbol.matchAll](""),
    function* () {},
    (function* () {})(),
    async function () {},
    async function* () {},
    (async function* () {})(),
    Promise.resolve(),
  ];
  for (const o of hidden) freeze(Object.getPrototypeOf(o));

  const deepFreeze = (o) => {
    if (typeof o !== "object" || o === null || Object.isFrozen(o)) return o;
    Object.freeze(o);
    for (const k of Object.keys(o)) deepFreeze(o[k]);
    return o;
  };
  return function makeCtx(ns, now, callId, auth, run) {
    const ctx = Object.create(proto);
    Object.defineProperty(ctx, "__run", { value: run });
    ctx.now = now;
    ctx.callId = callId;
    ctx.auth = deepFreeze(auth);
    ctx.call = function call(name, args) {
      const f = ns[name];
      if (typeof f !== "function") throw new TypeError(`ctx.call: the module exports no function "${String(name)}"`);
      return f(ctx, args);
    };
    return Object.freeze(ctx);
  };
})()
"#;

impl Sandbox {
    /// A sandbox for `module`, with its first instance prepared.
    pub fn new(module: Arc<Compiled>, limits: FunctionLimits) -> Result<Sandbox, CallError> {
        let (runtime, context, host, clock, make_ctx) = realm(&limits)?;
        let before = usage(&runtime);
        let mut sandbox = Sandbox {
            next: None,
            make_ctx,
            context,
            runtime,
            module,
            host,
            clock,
            instances: 0,
            max_instances: MAX_INSTANCES,
            runs: 0,
            poisoned: false,
            limits,
        };
        sandbox.prepare()?;
        let after = usage(&sandbox.runtime);
        let per_instance = after.saturating_sub(before).max(1);
        sandbox.max_instances = u32::try_from(INSTANCE_ROOM / per_instance)
            .map_or(MAX_INSTANCES, |n| n.clamp(16, MAX_INSTANCES));
        sandbox.runtime.set_memory_limit(
            after
                .saturating_add(INSTANCE_ROOM)
                .saturating_add(limits.memory_bytes),
        );
        Ok(sandbox)
    }

    /// Checks `source`: it must compile as a module and its top-level code
    /// must run within the limits. Gives the exported functions.
    pub fn compile(
        source: &str,
        version: u64,
        limits: FunctionLimits,
    ) -> Result<Compiled, DeployError> {
        let invalid = |message: String| DeployError::Invalid {
            message,
            line: None,
            column: None,
        };
        let (runtime, context, _host, clock, make_ctx) =
            realm(&limits).map_err(|e| invalid(e.to_string()))?;
        runtime.set_memory_limit(usage(&runtime).saturating_add(limits.memory_bytes));
        clock.arm(limits.timeout);
        let result = context.with(|ctx| {
            let module = Module::declare(ctx.clone(), MODULE_NAME, source)
                .map_err(|e| deploy_error(&ctx, e, &clock))?;
            let bytecode: Arc<[u8]> = module
                .write(rquickjs::module::WriteOptions::default())
                .map_err(|e| invalid(format!("writing the module's bytecode: {e}")))?
                .into();
            let ns = evaluate(module).map_err(|e| deploy_error(&ctx, e, &clock))?;
            let mut functions = BTreeSet::new();
            for name in ns.keys::<String>() {
                let name = name.map_err(|e| invalid(e.to_string()))?;
                let value: JsValue = ns.get(&name).map_err(|e| invalid(e.to_string()))?;
                if value.is_function() {
                    functions.insert(name);
                }
            }
            Ok((functions, bytecode))
        });
        clock.disarm();
        drop(make_ctx);
        let (functions, bytecode) = result?;
        Ok(Compiled {
            version,
            source: Arc::from(source),
            functions,
            bytecode,
        })
    }

    /// The module this sandbox runs.
    pub fn module(&self) -> &Arc<Compiled> {
        &self.module
    }

    /// True when the sandbox should be replaced: it has held many module
    /// instances, or a run hit a limit that may have left it unsound.
    pub fn worn(&self) -> bool {
        self.poisoned || self.instances >= self.max_instances
    }

    /// Prepares the next call's module instance (off the call's path:
    /// the engine does it after answering).
    pub fn prepare(&mut self) -> Result<(), CallError> {
        if self.next.is_some() {
            return Ok(());
        }
        self.clock.arm(self.limits.timeout);
        let bytecode = Arc::clone(&self.module.bytecode);
        let ns = self.context.with(|ctx| {
            let ns = instantiate(&ctx, &bytecode)
                .map_err(|e| run_error(&ctx, e, &self.clock, &self.limits))?;
            Ok::<_, CallError>(Persistent::save(&ctx, ns))
        });
        self.clock.disarm();
        self.next = Some(ns?);
        self.instances += 1;
        Ok(())
    }

    /// Runs one call on a fresh instance of the module.
    pub fn run(&mut self, env: &Arc<Env>, call: &RunCall<'_>) -> RunOutput {
        // Made after the previous call; made now if that failed.
        if let Err(e) = self.prepare() {
            self.poisoned = true;
            return RunOutput {
                result: Err(CallError::Internal(format!(
                    "making a fresh instance of the module failed: {e}"
                ))),
                buffer: Buffer::default(),
            };
        }
        let Some(ns) = self.next.take() else {
            return RunOutput {
                result: Err(CallError::Internal("no module instance".into())),
                buffer: Buffer::default(),
            };
        };
        self.runs += 1;
        let run = self.runs;
        *self.host.borrow_mut() = Some(Host {
            env: Arc::clone(env),
            buffer: Buffer::default(),
            rng: SplitMix64::for_call(call.call_id),
            now_ms: call.now_ms,
            failed: None,
            run,
            bytes: 0,
        });
        self.clock.arm(self.limits.timeout);
        let (clock, limits, make_ctx) = (&self.clock, &self.limits, &self.make_ctx);
        let result = self.context.with(|ctx| -> Result<Value, CallError> {
            let internal = |e: rquickjs::Error| CallError::Internal(e.to_string());
            let ns = ns.restore(&ctx).map_err(internal)?;
            let f: JsValue = ns.get(call.function).map_err(internal)?;
            let Some(f) = f.as_function() else {
                return Err(CallError::UnknownFunction {
                    name: call.function.to_string(),
                    version: 0,
                });
            };
            let make: Function = make_ctx.clone().restore(&ctx).map_err(internal)?;
            let auth = to_js(&ctx, call.auth).map_err(internal)?;
            let c: Object = make
                .call((
                    ns.clone(),
                    call.now_ms as f64,
                    call.call_id,
                    auth,
                    run as f64,
                ))
                .map_err(|e| run_error(&ctx, e, clock, limits))?;
            let args = to_js(&ctx, call.args).map_err(internal)?;
            let out = f.call::<_, JsValue>((c, args));
            // Jobs the run queued (promise reactions) are part of it: run
            // them now, within its deadline, never in a later call.
            let drained = drain_jobs(&ctx, clock);
            let out = out.map_err(|e| run_error(&ctx, e, clock, limits))?;
            drained.map_err(|e| run_error(&ctx, e, clock, limits))?;
            let out = settle(&ctx, out, clock).map_err(|e| run_error(&ctx, e, clock, limits))?;
            match from_js(&out, 0, env.max_nesting, env.max_value_bytes) {
                Ok(v) => Ok(v),
                Err(Conversion::Bad(why)) => Err(CallError::BadReturn(why)),
                Err(Conversion::Js(e)) => Err(run_error(&ctx, e, clock, limits)),
            }
        });
        self.clock.disarm();
        let host = self.host.borrow_mut().take();
        let (buffer, failed) = match host {
            Some(h) => (h.buffer, h.failed),
            None => (Buffer::default(), None),
        };
        let result = match (failed, result) {
            (Some(failed), _) => Err(failed),
            (None, result) => result,
        };
        if matches!(
            result,
            Err(CallError::OutOfMemory { .. } | CallError::Timeout { .. })
        ) {
            self.poisoned = true;
        }
        RunOutput { result, buffer }
    }
}

/// The runtime's heap size. Walks the heap: only when a sandbox is made.
fn usage(runtime: &Runtime) -> usize {
    usize::try_from(runtime.memory_usage().malloc_size).unwrap_or(0)
}

impl Clock {
    fn arm(&self, timeout: std::time::Duration) {
        self.fired.set(false);
        self.deadline.set(Some(Instant::now() + timeout));
    }

    fn disarm(&self) {
        self.deadline.set(None);
    }
}

/// Runs every queued job (a job that throws is dropped, as an unhandled
/// rejection is); stops at the deadline.
fn drain_jobs(ctx: &Ctx<'_>, clock: &Clock) -> rquickjs::Result<()> {
    while ctx.execute_pending_job() {
        if clock.fired.get() {
            return Err(rquickjs::Error::Exception);
        }
    }
    Ok(())
}

type Realm = (
    Runtime,
    Context,
    Shared,
    Rc<Clock>,
    Persistent<Function<'static>>,
);

/// A runtime with the limits and a context with the prelude run.
fn realm(limits: &FunctionLimits) -> Result<Realm, CallError> {
    let internal = |e: rquickjs::Error| CallError::Internal(format!("starting QuickJS: {e}"));
    let runtime = Runtime::new().map_err(internal)?;
    runtime.set_max_stack_size(limits.stack_bytes);
    let clock = Rc::new(Clock::default());
    let handler_clock = Rc::clone(&clock);
    runtime.set_interrupt_handler(Some(Box::new(move || match handler_clock.deadline.get() {
        Some(deadline) if Instant::now() >= deadline => {
            handler_clock.fired.set(true);
            true
        }
        _ => false,
    })));
    let context = Context::custom::<Intrinsics>(&runtime).map_err(internal)?;
    let host: Shared = Rc::new(RefCell::new(None));
    let make_ctx = context.with(|ctx| {
        install_natives(&ctx, &host)?;
        let make: Function = ctx.eval(PRELUDE)?;
        Ok::<_, rquickjs::Error>(Persistent::save(&ctx, make))
    });
    let make_ctx =
        make_ctx.map_err(|e| CallError::Internal(format!("the sandbox prelude failed: {e}")))?;
    Ok((runtime, context, host, clock, make_ctx))
}

/// Declares and evaluates one instance of the module; its namespace.
fn instantiate<'js>(ctx: &Ctx<'js>, bytecode: &[u8]) -> rquickjs::Result<Object<'js>> {
    // SAFETY: `Module::load` trusts its bytes to be valid QuickJS
    // bytecode. These are: `Sandbox::compile` wrote them with
    // `Module::write` from a module this same QuickJS build had just
    // compiled, in this process; they are never read from the store or
    // the network (the store keeps the source), so no other build's or
    // anyone else's bytes can reach here. quickjs-ng copies what it
    // reads (`JS_READ_OBJ_ROM_DATA` is 0), so the slice need not outlive
    // the call.
    #[allow(unsafe_code)]
    let module = unsafe { Module::load(ctx.clone(), bytecode) }?;
    evaluate(module)
}

/// Evaluates a declared module; its namespace.
fn evaluate<'js>(module: Module<'js, rquickjs::module::Declared>) -> rquickjs::Result<Object<'js>> {
    let (module, promise) = module.eval()?;
    promise.finish::<()>()?;
    module.namespace()
}

/// Runs the jobs a returned promise waits on (an `async` function); its
/// value, or the exception it rejected with.
fn settle<'js>(ctx: &Ctx<'js>, out: JsValue<'js>, clock: &Clock) -> rquickjs::Result<JsValue<'js>> {
    let Some(promise) = out.as_promise() else {
        return Ok(out);
    };
    let promise = promise.clone();
    drain_jobs(ctx, clock)?;
    match promise.result::<JsValue>() {
        Some(result) => result,
        None => Err(Exception::throw_type(
            ctx,
            "the function's promise never settled (nothing can complete it: there is no I/O and there are no timers)",
        )),
    }
}

/// The exception behind `e`, classified.
fn run_error(
    ctx: &Ctx<'_>,
    e: rquickjs::Error,
    clock: &Clock,
    limits: &FunctionLimits,
) -> CallError {
    if clock.fired.get() {
        return CallError::Timeout {
            ms: u64::try_from(limits.timeout.as_millis()).unwrap_or(u64::MAX),
        };
    }
    let thrown = match e {
        rquickjs::Error::Exception => describe(ctx),
        rquickjs::Error::Allocation => {
            return CallError::OutOfMemory {
                bytes: limits.memory_bytes,
            };
        }
        other => return CallError::Internal(other.to_string()),
    };
    match (thrown.name.as_str(), thrown.message.as_str()) {
        ("InternalError", "out of memory") => CallError::OutOfMemory {
            bytes: limits.memory_bytes,
        },
        // Throwing the out-of-memory error can itself fail for lack of
        // memory: nothing is thrown.
        ("", _) if thrown.oom_like => CallError::OutOfMemory {
            bytes: limits.memory_bytes,
        },
        ("RangeError", "Maximum call stack size exceeded") => CallError::StackOverflow {
            bytes: limits.stack_bytes,
        },
        ("InternalError", m) if m.starts_with("stack overflow") => CallError::StackOverflow {
            bytes: limits.stack_bytes,
        },
        _ => CallError::Threw {
            message: thrown.text(),
        },
    }
}

/// A module that fails to compile or to evaluate.
fn deploy_error(ctx: &Ctx<'_>, e: rquickjs::Error, clock: &Clock) -> DeployError {
    if clock.fired.get() {
        return DeployError::Invalid {
            message: "the module's top-level code ran past the time limit (functions.timeout_ms)"
                .into(),
            line: None,
            column: None,
        };
    }
    let thrown = match e {
        rquickjs::Error::Exception => describe(ctx),
        other => {
            return DeployError::Invalid {
                message: other.to_string(),
                line: None,
                column: None,
            };
        }
    };
    let (line, column) = thrown.position.unzip();
    DeployError::Invalid {
        message: thrown.text(),
        line,
        column,
    }
}

/// An exception, read.
struct Thrown {
    name: String,
    message: String,
    /// `(line, column)` of the innermost frame in the module.
    position: Option<(u32, u32)>,
    oom_like: bool,
}

impl Thrown {
    fn text(&self) -> String {
        let head = if self.name.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.name, self.message)
        };
        match self.position {
            Some((line, column)) => format!("{head} (at {MODULE_NAME}:{line}:{column})"),
            None => head,
        }
    }
}

fn describe(ctx: &Ctx<'_>) -> Thrown {
    let value = ctx.catch();
    let Some(obj) = value.as_object() else {
        let message = if value.is_undefined() || value.is_null() {
            String::new()
        } else {
            value
                .clone()
                .try_into_string()
                .ok()
                .and_then(|s| s.to_string().ok())
                .or_else(|| {
                    ctx.json_stringify(value.clone())
                        .ok()
                        .flatten()
                        .and_then(|s| s.to_string().ok())
                })
                .unwrap_or_else(|| format!("a thrown {}", value.type_name()))
        };
        return Thrown {
            name: String::new(),
            // No exception at all: throwing the out-of-memory error failed.
            oom_like: value.type_of() == rquickjs::Type::Uninitialized,
            message: if message.is_empty() {
                format!("the function threw {}", value.type_name())
            } else {
                message
            },
            position: None,
        };
    };
    let text = |key: &str| -> String {
        obj.get::<_, Option<rquickjs::Coerced<String>>>(key)
            .ok()
            .flatten()
            .map(|s| s.0)
            .unwrap_or_default()
    };
    let (name, message, stack) = (text("name"), text("message"), text("stack"));
    // Syntax errors carry their place in `fileName`/`lineNumber`; thrown
    // ones in the stack's frames (`at f (app.js:4:9)`).
    let line = obj.get::<_, Option<u32>>("lineNumber").ok().flatten();
    let column = obj.get::<_, Option<u32>>("columnNumber").ok().flatten();
    let position = match (line, column) {
        (Some(l), Some(c)) if l > 0 => Some((l, c)),
        _ => stack_position(&stack),
    };
    Thrown {
        name,
        message,
        position,
        oom_like: false,
    }
}

/// The first `app.js:LINE:COL` in a stack.
fn stack_position(stack: &str) -> Option<(u32, u32)> {
    let marker = format!("{MODULE_NAME}:");
    let at = stack.find(&marker)? + marker.len();
    let mut parts = stack[at..].splitn(3, ':');
    let line = parts.next()?.parse().ok()?;
    let column: String = parts
        .next()?
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    Some((line, column.parse().ok()?))
}

/// The native side of `ctx` and of the clock and generator.
fn install_natives<'js>(ctx: &Ctx<'js>, host: &Shared) -> rquickjs::Result<()> {
    let natives = Object::new(ctx.clone())?;

    let h = Rc::clone(host);
    natives.set(
        "now",
        Function::new(ctx.clone(), move || -> f64 {
            h.try_borrow()
                .ok()
                .and_then(|h| h.as_ref().map(|h| h.now_ms as f64))
                .unwrap_or(0.0)
        })?,
    )?;

    let h = Rc::clone(host);
    natives.set(
        "random",
        Function::new(ctx.clone(), move || -> f64 {
            match h
                .try_borrow_mut()
                .ok()
                .as_deref_mut()
                .and_then(Option::as_mut)
            {
                Some(h) => h.rng.next_f64(),
                // Module evaluation: the same value every time.
                None => 0.0,
            }
        })?,
    )?;

    let h = Rc::clone(host);
    natives.set(
        "get",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, this: This<Object<'js>>, path: JsValue<'js>| {
                let path = path_text(&path, "ctx.get")?;
                let value = with_host(&ctx, &h, &this, |h| {
                    let path = path_arg(h, &path, "ctx.get")?;
                    let observed = read(h, |e| e.store().get(&path))?;
                    h.buffer.read(&path, ReadKind::Value, observed.seen);
                    check_reads(h)?;
                    Ok(h.buffer.overlay(&path, observed))
                })?;
                to_js(&ctx, &value)
            },
        )?,
    )?;

    let h = Rc::clone(host);
    natives.set(
        "keys",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, this: This<Object<'js>>, path: JsValue<'js>| {
                let path = path_text(&path, "ctx.keys")?;
                let keys = with_host(&ctx, &h, &this, |h| {
                    let path = path_arg(h, &path, "ctx.keys")?;
                    let keys: Vec<String> = if h.buffer.touches(&path) {
                        let observed = read(h, |e| e.store().get(&path))?;
                        h.buffer.read(&path, ReadKind::Subtree, observed.seen);
                        match h.buffer.overlay(&path, observed) {
                            Value::Object(children) => {
                                children.keys().map(|k| k.to_string()).collect()
                            }
                            _ => Vec::new(),
                        }
                    } else {
                        let observed = read(h, |e| e.store().keys(&path))?;
                        h.buffer.read(&path, ReadKind::Subtree, observed.seen);
                        observed
                            .keys
                            .iter()
                            .map(|k| k.as_str().to_string())
                            .collect()
                    };
                    check_reads(h)?;
                    Ok(keys)
                })?;
                let array = Array::new(ctx.clone())?;
                for (i, k) in keys.iter().enumerate() {
                    array.set(i, k.as_str())?;
                }
                Ok::<_, rquickjs::Error>(array)
            },
        )?,
    )?;

    let h = Rc::clone(host);
    natives.set(
        "set",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>,
                  this: This<Object<'js>>,
                  path: JsValue<'js>,
                  value: Opt<JsValue<'js>>| {
                let path = path_text(&path, "ctx.set")?;
                let value = value_arg(&ctx, &h, value.0, "ctx.set")?;
                with_host(&ctx, &h, &this, |h| {
                    let path = path_arg(h, &path, "ctx.set")?;
                    write(h, path, value)
                })
            },
        )?,
    )?;

    let h = Rc::clone(host);
    natives.set(
        "remove",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, this: This<Object<'js>>, path: JsValue<'js>| {
                let path = path_text(&path, "ctx.remove")?;
                with_host(&ctx, &h, &this, |h| {
                    let path = path_arg(h, &path, "ctx.remove")?;
                    write(h, path, Value::Null)
                })
            },
        )?,
    )?;

    let h = Rc::clone(host);
    natives.set(
        "patch",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>,
                  this: This<Object<'js>>,
                  path: JsValue<'js>,
                  value: Opt<JsValue<'js>>| {
                let path = path_text(&path, "ctx.patch")?;
                let value = value_arg(&ctx, &h, value.0, "ctx.patch")?;
                let Value::Object(children) = value else {
                    return Err(Exception::throw_type(
                        &ctx,
                        "ctx.patch(path, obj): obj must be an object of children to set",
                    ));
                };
                with_host(&ctx, &h, &this, |h| {
                    let path = path_arg(h, &path, "ctx.patch")?;
                    for (k, child) in children {
                        let key = Key::new(&k, &h.env.paths).map_err(|e| {
                            Refusal::Type(format!("ctx.patch: child key {k:?}: {e}"))
                        })?;
                        let child_path = path
                            .child(key, &h.env.paths)
                            .map_err(|e| Refusal::Type(format!("ctx.patch: {e}")))?;
                        write(h, child_path, child)?;
                    }
                    Ok(())
                })
            },
        )?,
    )?;

    ctx.globals().set("__tarn", natives)?;
    Ok(())
}

/// Runs `f` on the call in progress; outside a call (a `ctx` kept past
/// its run) it throws.
fn with_host<'js, R>(
    ctx: &Ctx<'js>,
    host: &Shared,
    this: &This<Object<'js>>,
    f: impl FnOnce(&mut Host) -> Result<R, Refusal>,
) -> rquickjs::Result<R> {
    let run = this.0.get::<_, Option<f64>>("__run").ok().flatten();
    // The borrow ends before anything is thrown: creating an error runs
    // no user code now, but nothing here relies on that.
    let result = match host.try_borrow_mut() {
        Err(_) => Err(Refusal::Type(
            "ctx methods cannot be called from inside another ctx method".into(),
        )),
        Ok(mut guard) => match guard.as_mut() {
            Some(h) if run == Some(h.run as f64) => f(h),
            _ => Err(Refusal::Type(
                "this ctx belongs to a call that has ended: ctx is only usable during its own call"
                    .into(),
            )),
        },
    };
    result.map_err(|r| match r {
        Refusal::Type(m) => Exception::throw_type(ctx, &m),
        Refusal::Range(m) => Exception::throw_range(ctx, &m),
        Refusal::Internal(m) => Exception::throw_internal(ctx, &m),
    })
}

/// Why a `ctx` method refuses, thrown once the host is released.
enum Refusal {
    Type(String),
    Range(String),
    Internal(String),
}

/// A value argument, converted before the host is borrowed (conversion
/// can run the value's `toJSON`, which may use `ctx`). An exception from
/// that code (the deadline, the memory limit) goes on as it is.
fn value_arg<'js>(
    ctx: &Ctx<'js>,
    host: &Shared,
    value: Option<JsValue<'js>>,
    what: &str,
) -> rquickjs::Result<Value> {
    let (nesting, max_bytes) = host
        .try_borrow()
        .ok()
        .and_then(|h| {
            h.as_ref()
                .map(|h| (h.env.max_nesting, h.env.max_value_bytes))
        })
        .unwrap_or((64, 1 << 20));
    match value {
        None => Ok(Value::Null),
        Some(v) => match from_js(&v, 0, nesting, max_bytes) {
            Ok(v) => Ok(v),
            Err(Conversion::Bad(why)) => Err(Exception::throw_type(ctx, &format!("{what}: {why}"))),
            Err(Conversion::Js(e)) => Err(e),
        },
    }
}

/// The text of a path argument.
fn path_text(path: &JsValue<'_>, what: &str) -> rquickjs::Result<String> {
    match path.as_string().and_then(|s| s.to_string().ok()) {
        Some(text) => Ok(text),
        None => Err(Exception::throw_type(
            path.ctx(),
            &format!(
                "{what}: the path must be a string like \"rooms/lobby/players\", not {}",
                path.type_name()
            ),
        )),
    }
}

fn path_arg(h: &Host, text: &str, what: &str) -> Result<Path, Refusal> {
    let path = Path::parse_with(text, &h.env.paths)
        .map_err(|e| Refusal::Type(format!("{what}({text:?}): {e}")))?;
    if path.is_root() {
        return Err(Refusal::Type(format!(
            "{what}({text:?}): functions read and write under the root, not the root itself (it also holds the system's $sys/)"
        )));
    }
    if path.is_reserved() {
        return Err(Refusal::Type(format!(
            "{what}({text:?}): top-level keys starting with $ are the system's; functions cannot read or write them"
        )));
    }
    Ok(path)
}

fn read<R>(h: &mut Host, f: impl FnOnce(&mut tarn_core::Engine) -> R) -> Result<R, Refusal> {
    match h.env.db.peek(f) {
        Ok((out, lsn)) => {
            h.buffer.lsn = h.buffer.lsn.max(lsn);
            Ok(out)
        }
        Err(e) => {
            h.failed = Some(CallError::Unavailable(e.to_string()));
            Err(Refusal::Internal(format!(
                "the database is unavailable: {e}"
            )))
        }
    }
}

fn check_reads(h: &Host) -> Result<(), Refusal> {
    // One read is kept for the call's stored outcome.
    let max = h.env.max_reads.saturating_sub(1);
    if h.buffer.reads() > max {
        return Err(Refusal::Range(format!(
            "more than {max} distinct reads in one call (limits.max_txn_reads, less one for the call's outcome)"
        )));
    }
    Ok(())
}

fn write(h: &mut Host, path: Path, value: Value) -> Result<(), Refusal> {
    h.bytes = h.bytes.saturating_add(value.json_len());
    if h.bytes > h.env.max_bytes {
        return Err(Refusal::Range(format!(
            "the values written in one call exceed {} bytes (limits.max_txn_bytes)",
            h.env.max_bytes
        )));
    }
    h.buffer.set(path, value);
    // One write is kept for the call's stored outcome.
    let max = h.env.max_writes.saturating_sub(1);
    if h.buffer.writes() > max {
        return Err(Refusal::Range(format!(
            "more than {max} writes in one call (limits.max_txn_writes, less one for the call's outcome)"
        )));
    }
    Ok(())
}

/// A tarn value as JavaScript.
pub fn to_js<'js>(ctx: &Ctx<'js>, value: &Value) -> rquickjs::Result<JsValue<'js>> {
    Ok(match value {
        Value::Null => JsValue::new_null(ctx.clone()),
        Value::Bool(b) => JsValue::new_bool(ctx.clone(), *b),
        Value::Int(i) => match i32::try_from(*i) {
            Ok(i) => JsValue::new_int(ctx.clone(), i),
            Err(_) => JsValue::new_float(ctx.clone(), *i as f64),
        },
        Value::Float(f) => JsValue::new_float(ctx.clone(), *f),
        Value::String(s) => rquickjs::String::from_str(ctx.clone(), s)?.into_value(),
        Value::Array(items) => {
            let array = Array::new(ctx.clone())?;
            for (i, item) in items.iter().enumerate() {
                array.set(i, to_js(ctx, item)?)?;
            }
            array.into_value()
        }
        Value::Object(children) => {
            let obj = Object::new(ctx.clone())?;
            for (k, child) in children {
                obj.set(&**k, to_js(ctx, child)?)?;
            }
            obj.into_value()
        }
    })
}

/// Why a JavaScript value could not be taken.
pub enum Conversion {
    /// It is not a JSON value (a function, `NaN`, too deep, too large).
    Bad(String),
    /// Code it ran (`toJSON`, a getter) threw; the exception is pending.
    Js(rquickjs::Error),
}

impl From<String> for Conversion {
    fn from(s: String) -> Conversion {
        Conversion::Bad(s)
    }
}

/// A JavaScript value as a tarn value, as `JSON.stringify` would see it:
/// `undefined` is `null`, object properties that are functions, symbols
/// or `undefined` are left out, `toJSON` is used. Numbers must be finite;
/// integers in the safe range are integers. Arrays longer than
/// `max_bytes / 2` elements (each takes at least two bytes as JSON) are
/// refused before anything is copied.
pub fn from_js<'js>(
    value: &JsValue<'js>,
    depth: usize,
    max_depth: usize,
    max_bytes: usize,
) -> Result<Value, Conversion> {
    use rquickjs::Type;
    if depth > max_depth {
        return Err(
            format!("nested deeper than {max_depth} levels (limits.max_value_nesting)").into(),
        );
    }
    Ok(match value.type_of() {
        Type::Uninitialized | Type::Undefined | Type::Null => Value::Null,
        Type::Bool => Value::Bool(value.as_bool().unwrap_or(false)),
        Type::Int => Value::Int(i64::from(value.as_int().unwrap_or(0))),
        Type::Float => {
            let f = value.as_float().unwrap_or(f64::NAN);
            if !f.is_finite() {
                return Err(format!("{f} is not a JSON number").into());
            }
            if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
                Value::Int(f as i64)
            } else {
                Value::Float(f)
            }
        }
        Type::String => Value::str(
            &value
                .as_string()
                .and_then(|s| s.to_string().ok())
                .unwrap_or_default(),
        ),
        Type::Array => {
            let array = value
                .as_object()
                .ok_or_else(|| "not an array".to_string())?;
            let len: f64 = array.get("length").map_err(Conversion::Js)?;
            let max = (max_bytes / 2) as f64;
            if !(0.0..=max).contains(&len) {
                return Err(format!(
                    "an array of {len} elements is larger than a value may be (limits.max_value_bytes)"
                )
                .into());
            }
            let len = len as usize;
            let mut items = Vec::with_capacity(len);
            for i in 0..len {
                let item: JsValue = array.get(i as u32).map_err(Conversion::Js)?;
                items.push(if item.is_function() || item.is_symbol() {
                    Value::Null
                } else {
                    from_js(&item, depth + 1, max_depth, max_bytes)?
                });
            }
            Value::Array(items.into())
        }
        Type::Symbol | Type::Function | Type::Constructor => {
            return Err(format!("a {} is not a value", value.type_name()).into());
        }
        Type::BigInt => return Err("a BigInt is not a JSON number".to_string().into()),
        _ => {
            let obj = value
                .as_object()
                .ok_or_else(|| "not an object".to_string())?;
            let to_json: JsValue = obj.get("toJSON").map_err(Conversion::Js)?;
            if let Some(to_json) = to_json.as_function() {
                let json: JsValue = to_json
                    .call((rquickjs::function::This(obj.clone()),))
                    .map_err(Conversion::Js)?;
                return from_js(&json, depth + 1, max_depth, max_bytes);
            }
            let mut children = std::collections::BTreeMap::new();
            for k in obj.keys::<String>() {
                let k = k.map_err(Conversion::Js)?;
                let v: JsValue = obj.get(&k).map_err(Conversion::Js)?;
                if v.is_undefined() || v.is_function() || v.is_symbol() {
                    continue;
                }
                let child = from_js(&v, depth + 1, max_depth, max_bytes)?;
                children.insert(Arc::from(k.as_str()), child);
            }
            Value::Object(children)
        }
    })
}
