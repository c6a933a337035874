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
//!   over the runtime's usage when the run starts, and a stack limit.
//!   Module instances accumulate in a context, so the engine replaces its
//!   sandbox after [`Sandbox::worn`].

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use rquickjs::context::intrinsic;
use rquickjs::{
    Array, Context, Ctx, Exception, Function, Module, Object, Persistent, Runtime, Value as JsValue,
};
use tarn_core::{Key, Path, PathLimits, ReadKind, Value};
use tarn_store::Db;

use crate::buffer::Buffer;
use crate::{CallError, DeployError, FunctionLimits};

/// The module's name in error positions and stacks.
pub const MODULE_NAME: &str = "app.js";

/// Instances a context holds before the sandbox is replaced.
const MAX_INSTANCES: u32 = 2000;

/// Heap size after which the sandbox is replaced (module instances are
/// not freed until their context is).
const MAX_IDLE_HEAP: i64 = 48 << 20;

/// A deployed module, checked: it compiles and its top-level code runs.
#[derive(Debug)]
pub struct Compiled {
    /// Its deploy version (1, 2, ...).
    pub version: u64,
    /// The source.
    pub source: Arc<str>,
    /// The names of its exported functions.
    pub functions: BTreeSet<String>,
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
    return args.length === 0 ? new RealDate(now()) : new RealDate(...args);
  }
  Object.defineProperty(Date_, "prototype", { value: RealDate.prototype });
  Object.defineProperty(Date_, "now", { value: function now_() { return now(); } });
  Object.defineProperty(Date_, "parse", { value: RealDate.parse });
  Object.defineProperty(Date_, "UTC", { value: RealDate.UTC });
  Object.defineProperty(Date_, "name", { value: "Date" });
  Object.defineProperty(RealDate.prototype, "constructor", { value: Date_ });
  Object.defineProperty(globalThis, "Date", { value: Date_, writable: true, configurable: true });
  Object.defineProperty(Math, "random", { value: function random() { return natives.random(); } });

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

  const deepFreeze = (o) => {
    if (typeof o !== "object" || o === null || Object.isFrozen(o)) return o;
    Object.freeze(o);
    for (const k of Object.keys(o)) deepFreeze(o[k]);
    return o;
  };
  return function makeCtx(ns, now, callId, auth) {
    const ctx = Object.create(proto);
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
        let mut sandbox = Sandbox {
            next: None,
            make_ctx,
            context,
            runtime,
            module,
            host,
            clock,
            instances: 0,
            poisoned: false,
            limits,
        };
        sandbox.prepare()?;
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
            let ns = instantiate(&ctx, source).map_err(|e| deploy_error(&ctx, e, &clock))?;
            let mut functions = BTreeSet::new();
            for name in ns.keys::<String>() {
                let name = name.map_err(|e| invalid(e.to_string()))?;
                let value: JsValue = ns.get(&name).map_err(|e| invalid(e.to_string()))?;
                if value.is_function() {
                    functions.insert(name);
                }
            }
            Ok(functions)
        });
        clock.disarm();
        drop(make_ctx);
        let functions = result?;
        Ok(Compiled {
            version,
            source: Arc::from(source),
            functions,
        })
    }

    /// The module this sandbox runs.
    pub fn module(&self) -> &Arc<Compiled> {
        &self.module
    }

    /// True when the sandbox should be replaced: it has held many module
    /// instances, or a run hit a limit that may have left it unsound.
    pub fn worn(&self) -> bool {
        self.poisoned || self.instances >= MAX_INSTANCES || usage_i64(&self.runtime) > MAX_IDLE_HEAP
    }

    /// Prepares the next call's module instance (off the call's path:
    /// the engine does it after answering).
    pub fn prepare(&mut self) -> Result<(), CallError> {
        if self.next.is_some() {
            return Ok(());
        }
        self.clock.arm(self.limits.timeout);
        let source = Arc::clone(&self.module.source);
        let ns = self.context.with(|ctx| {
            let ns = instantiate(&ctx, &source)
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
        let ns = match self.next.take() {
            Some(ns) => ns,
            None => {
                if let Err(e) = self.prepare() {
                    return RunOutput {
                        result: Err(e),
                        buffer: Buffer::default(),
                    };
                }
                match self.next.take() {
                    Some(ns) => ns,
                    None => {
                        return RunOutput {
                            result: Err(CallError::Internal("no module instance".into())),
                            buffer: Buffer::default(),
                        };
                    }
                }
            }
        };
        *self.host.borrow_mut() = Some(Host {
            env: Arc::clone(env),
            buffer: Buffer::default(),
            rng: SplitMix64::for_call(call.call_id),
            now_ms: call.now_ms,
            failed: None,
        });
        let base = usage(&self.runtime);
        self.runtime
            .set_memory_limit(base.saturating_add(self.limits.memory_bytes));
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
                .call((ns.clone(), call.now_ms as f64, call.call_id, auth))
                .map_err(|e| run_error(&ctx, e, clock, limits))?;
            let args = to_js(&ctx, call.args).map_err(internal)?;
            let out: JsValue = f
                .call((c, args))
                .map_err(|e| run_error(&ctx, e, clock, limits))?;
            let out = settle(&ctx, out).map_err(|e| run_error(&ctx, e, clock, limits))?;
            from_js(&out, 0, env.max_nesting).map_err(CallError::BadReturn)
        });
        self.clock.disarm();
        // Lift the run's limit; what the instance keeps counts toward the
        // next run's base.
        self.runtime.set_memory_limit(0);
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

fn usage_i64(runtime: &Runtime) -> i64 {
    runtime.memory_usage().malloc_size
}

fn usage(runtime: &Runtime) -> usize {
    usize::try_from(usage_i64(runtime)).unwrap_or(0)
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
fn instantiate<'js>(ctx: &Ctx<'js>, source: &str) -> rquickjs::Result<Object<'js>> {
    let module = Module::declare(ctx.clone(), MODULE_NAME, source)?;
    let (module, promise) = module.eval()?;
    promise.finish::<()>()?;
    module.namespace()
}

/// Runs the jobs a returned promise waits on (an `async` function); its
/// value, or the exception it rejected with.
fn settle<'js>(ctx: &Ctx<'js>, out: JsValue<'js>) -> rquickjs::Result<JsValue<'js>> {
    let Some(promise) = out.as_promise() else {
        return Ok(out);
    };
    let promise = promise.clone();
    while ctx.execute_pending_job() {}
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
        ("", "") if thrown.oom_like => CallError::OutOfMemory {
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
            oom_like: value.is_null() || value.is_undefined(),
            message,
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
            h.borrow().as_ref().map_or(0.0, |h| h.now_ms as f64)
        })?,
    )?;

    let h = Rc::clone(host);
    natives.set(
        "random",
        Function::new(ctx.clone(), move || -> f64 {
            match h.borrow_mut().as_mut() {
                Some(h) => h.rng.next_f64(),
                // Module evaluation: the same sequence every time.
                None => 0.0,
            }
        })?,
    )?;

    let h = Rc::clone(host);
    natives.set(
        "get",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, path: JsValue<'js>| {
            let value = with_host(&ctx, &h, |h| {
                let path = path_arg(&ctx, h, &path, "ctx.get")?;
                let (observed, lsn) = read(&ctx, h, |e| e.store().get(&path))?;
                h.buffer.lsn = h.buffer.lsn.max(lsn);
                h.buffer.read(&path, ReadKind::Value, observed.seen);
                check_reads(&ctx, h)?;
                Ok(h.buffer.overlay(&path, observed))
            })?;
            to_js(&ctx, &value)
        })?,
    )?;

    let h = Rc::clone(host);
    natives.set(
        "keys",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, path: JsValue<'js>| {
            let keys = with_host(&ctx, &h, |h| {
                let path = path_arg(&ctx, h, &path, "ctx.keys")?;
                let keys: Vec<String> = if h.buffer.touches(&path) {
                    let (observed, lsn) = read(&ctx, h, |e| e.store().get(&path))?;
                    h.buffer.lsn = h.buffer.lsn.max(lsn);
                    h.buffer.read(&path, ReadKind::Subtree, observed.seen);
                    match h.buffer.overlay(&path, observed) {
                        Value::Object(children) => children.keys().map(|k| k.to_string()).collect(),
                        _ => Vec::new(),
                    }
                } else {
                    let (observed, lsn) = read(&ctx, h, |e| e.store().keys(&path))?;
                    h.buffer.lsn = h.buffer.lsn.max(lsn);
                    h.buffer.read(&path, ReadKind::Subtree, observed.seen);
                    observed
                        .keys
                        .iter()
                        .map(|k| k.as_str().to_string())
                        .collect()
                };
                check_reads(&ctx, h)?;
                Ok(keys)
            })?;
            let array = Array::new(ctx.clone())?;
            for (i, k) in keys.iter().enumerate() {
                array.set(i, k.as_str())?;
            }
            Ok::<_, rquickjs::Error>(array)
        })?,
    )?;

    let h = Rc::clone(host);
    natives.set(
        "set",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>,
                  path: JsValue<'js>,
                  value: rquickjs::function::Opt<JsValue<'js>>| {
                let value = value_arg(&ctx, &h, value.0, "ctx.set")?;
                with_host(&ctx, &h, |h| {
                    let path = path_arg(&ctx, h, &path, "ctx.set")?;
                    write(&ctx, h, path, value)
                })
            },
        )?,
    )?;

    let h = Rc::clone(host);
    natives.set(
        "remove",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, path: JsValue<'js>| {
            with_host(&ctx, &h, |h| {
                let path = path_arg(&ctx, h, &path, "ctx.remove")?;
                write(&ctx, h, path, Value::Null)
            })
        })?,
    )?;

    let h = Rc::clone(host);
    natives.set(
        "patch",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>,
                  path: JsValue<'js>,
                  value: rquickjs::function::Opt<JsValue<'js>>| {
                let value = value_arg(&ctx, &h, value.0, "ctx.patch")?;
                let Value::Object(children) = value else {
                    return Err(Exception::throw_type(
                        &ctx,
                        "ctx.patch(path, obj): obj must be an object of children to set",
                    ));
                };
                with_host(&ctx, &h, |h| {
                    let path = path_arg(&ctx, h, &path, "ctx.patch")?;
                    for (k, child) in children {
                        let key = Key::new(&k, &h.env.paths).map_err(|e| {
                            Exception::throw_type(&ctx, &format!("ctx.patch: child key {k:?}: {e}"))
                        })?;
                        let child_path = path
                            .child(key, &h.env.paths)
                            .map_err(|e| Exception::throw_type(&ctx, &format!("ctx.patch: {e}")))?;
                        write(&ctx, h, child_path, child)?;
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
    f: impl FnOnce(&mut Host) -> rquickjs::Result<R>,
) -> rquickjs::Result<R> {
    let mut guard = host.borrow_mut();
    match guard.as_mut() {
        Some(h) => f(h),
        None => Err(Exception::throw_type(
            ctx,
            "ctx is only usable during its call (it was kept past the end of the call, or used while the module loads)",
        )),
    }
}

/// A value argument, converted before the host is borrowed (conversion
/// can run the value's `toJSON`, which may use `ctx`).
fn value_arg<'js>(
    ctx: &Ctx<'js>,
    host: &Shared,
    value: Option<JsValue<'js>>,
    what: &str,
) -> rquickjs::Result<Value> {
    let nesting = host.borrow().as_ref().map_or(64, |h| h.env.max_nesting);
    match value {
        None => Ok(Value::Null),
        Some(v) => {
            from_js(&v, 0, nesting).map_err(|e| Exception::throw_type(ctx, &format!("{what}: {e}")))
        }
    }
}

fn path_arg<'js>(
    ctx: &Ctx<'js>,
    h: &Host,
    path: &JsValue<'js>,
    what: &str,
) -> rquickjs::Result<Path> {
    let Some(text) = path.as_string().and_then(|s| s.to_string().ok()) else {
        return Err(Exception::throw_type(
            ctx,
            &format!(
                "{what}: the path must be a string like \"rooms/lobby/players\", not {}",
                path.type_name()
            ),
        ));
    };
    let path = Path::parse_with(&text, &h.env.paths)
        .map_err(|e| Exception::throw_type(ctx, &format!("{what}({text:?}): {e}")))?;
    if path.keys().first().is_some_and(|k| k.as_str() == "$sys") {
        return Err(Exception::throw_type(
            ctx,
            &format!("{what}({text:?}): $sys/ is the system's; functions cannot read or write it"),
        ));
    }
    Ok(path)
}

fn read<'js, R>(
    ctx: &Ctx<'js>,
    h: &mut Host,
    f: impl FnOnce(&mut tarn_core::Engine) -> R,
) -> rquickjs::Result<(R, u64)> {
    h.env.db.peek(f).map_err(|e| {
        h.failed = Some(CallError::Unavailable(e.to_string()));
        Exception::throw_internal(ctx, &format!("the database is unavailable: {e}"))
    })
}

fn check_reads(ctx: &Ctx<'_>, h: &Host) -> rquickjs::Result<()> {
    if h.buffer.reads() > h.env.max_reads {
        return Err(Exception::throw_range(
            ctx,
            &format!(
                "more than {} distinct reads in one call (limits.max_txn_reads)",
                h.env.max_reads
            ),
        ));
    }
    Ok(())
}

fn write(ctx: &Ctx<'_>, h: &mut Host, path: Path, value: Value) -> rquickjs::Result<()> {
    h.buffer.set(path, value);
    if h.buffer.writes() > h.env.max_writes {
        return Err(Exception::throw_range(
            ctx,
            &format!(
                "more than {} writes in one call (limits.max_txn_writes)",
                h.env.max_writes
            ),
        ));
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

/// A JavaScript value as a tarn value, as `JSON.stringify` would see it:
/// `undefined` is `null`, object properties that are functions, symbols
/// or `undefined` are left out, `toJSON` is used. Numbers must be finite;
/// integers in the safe range are integers.
pub fn from_js<'js>(value: &JsValue<'js>, depth: usize, max_depth: usize) -> Result<Value, String> {
    use rquickjs::Type;
    if depth > max_depth {
        return Err(format!(
            "nested deeper than {max_depth} levels (limits.max_value_nesting)"
        ));
    }
    Ok(match value.type_of() {
        Type::Uninitialized | Type::Undefined | Type::Null => Value::Null,
        Type::Bool => Value::Bool(value.as_bool().unwrap_or(false)),
        Type::Int => Value::Int(i64::from(value.as_int().unwrap_or(0))),
        Type::Float => {
            let f = value.as_float().unwrap_or(f64::NAN);
            if !f.is_finite() {
                return Err(format!("{f} is not a JSON number"));
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
            let array = value.as_array().ok_or("not an array")?;
            let mut items = Vec::with_capacity(array.len());
            for item in array.iter::<JsValue>() {
                let item = item.map_err(|e| e.to_string())?;
                items.push(if item.is_function() || item.is_symbol() {
                    Value::Null
                } else {
                    from_js(&item, depth + 1, max_depth)?
                });
            }
            Value::Array(items.into())
        }
        Type::Symbol | Type::Function | Type::Constructor => {
            return Err(format!("a {} is not a value", value.type_name()));
        }
        Type::BigInt => return Err("a BigInt is not a JSON number".into()),
        _ => {
            let obj = value.as_object().ok_or("not an object")?;
            if let Ok(to_json) = obj.get::<_, Function>("toJSON") {
                let json: JsValue = to_json
                    .call((rquickjs::function::This(obj.clone()),))
                    .map_err(|e| format!("toJSON failed: {e}"))?;
                return from_js(&json, depth + 1, max_depth);
            }
            let mut children = std::collections::BTreeMap::new();
            for entry in obj.props::<String, JsValue>() {
                let (k, v) = entry.map_err(|e| e.to_string())?;
                if v.is_undefined() || v.is_function() || v.is_symbol() {
                    continue;
                }
                let child = from_js(&v, depth + 1, max_depth)?;
                children.insert(Arc::from(k.as_str()), child);
            }
            Value::Object(children)
        }
    })
}
