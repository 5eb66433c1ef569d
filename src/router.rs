//! Several engines behind one server: which devices get an engine
//! ([`DeviceSpec`], [`placements`]), one admission bound for all of them,
//! and which engine takes each request ([`Engines::submit`]).
//!
//! Data parallelism: every engine holds the whole model, its own context and
//! slots, on its own thread and device, so N GPUs serve about N times the
//! traffic of one (llama.cpp's `--split-mode` instead spreads one model over
//! the GPUs, which only pays for a model that does not fit one card).
//!
//! Routing, per request, among the engines that are ready:
//! 1. **prefix:** the engine whose free slots' prompt cache holds the longest
//!    prefix of the prompt, when that covers at least half of it, the engine
//!    still has a free slot and holds at most [`prefix_slack`] more requests
//!    than the least loaded engine (ties: the less loaded one);
//! 2. else the **least loaded** engine (running + waiting; ties: the lowest
//!    index).
//!
//! `--routing least-loaded` ([`Routing::LeastLoaded`]) skips step 1 (to
//! measure what the prompt cache's routing adds).
//!
//! Admission is the server's: at most `Σ slots + max_queue` requests are in
//! flight over all engines, beyond that 429. A failed engine is left out of
//! routing and of the bound; `/health` reports it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::engine::{
    devices, Bound, Engine, EngineConfig, EngineError, GenerateRequest, GenerationStream,
    LoadState, ModelInfo, Placement, Prompt, PromptTokens, SplitMode,
};

/// Errors of choosing devices.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeviceError {
    /// `--devices` could not be parsed.
    #[error("--devices {0:?}: expected `all`, or a comma-separated list of GPU indices and `cpu`")]
    Syntax(String),
    /// An index names no GPU.
    #[error("--devices: GPU {index} does not exist ({count} GPUs listed by the loaded backends)")]
    NoSuchGpu {
        /// The index asked for.
        index: usize,
        /// GPUs available.
        count: usize,
    },
    /// A split over devices that include the CPU or repeat a GPU.
    #[error("--split-mode {0} needs two or more distinct GPUs in --devices")]
    Split(&'static str),
    /// The backends could not be loaded.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What `--devices` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// Every GPU the backends list (one engine each); the CPU when none.
    #[default]
    All,
    /// These devices, in order; one engine each.
    List(Vec<DeviceItem>),
}

/// One entry of `--devices`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceItem {
    /// The CPU (repeatable: `cpu,cpu` runs two CPU engines, for tests).
    Cpu,
    /// The GPU at this position in the backends' GPU list (`0` = `CUDA0`).
    Gpu(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("all") {
            return Ok(DeviceSpec::All);
        }
        let items = t
            .split(',')
            .map(|p| {
                let p = p.trim();
                if p.eq_ignore_ascii_case("cpu") {
                    Ok(DeviceItem::Cpu)
                } else {
                    p.parse::<usize>()
                        .map(DeviceItem::Gpu)
                        .map_err(|_| DeviceError::Syntax(s.to_string()))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if items.is_empty() {
            return Err(DeviceError::Syntax(s.to_string()));
        }
        Ok(DeviceSpec::List(items))
    }
}

/// Where each engine runs, from `--devices`, `--split-mode` and the GPUs
/// listed (by their position, as `gpus` gives them). `n_gpu_layers == Some(0)`
/// with `all` means the CPU.
pub fn placements(
    spec: &DeviceSpec,
    split: SplitMode,
    gpus: &[devices::Gpu],
    n_gpu_layers: Option<u32>,
) -> Result<Vec<Placement>, DeviceError> {
    let items: Vec<DeviceItem> = match spec {
        DeviceSpec::All if gpus.is_empty() || n_gpu_layers == Some(0) => {
            return Ok(vec![Placement::Auto]);
        }
        DeviceSpec::All => (0..gpus.len()).map(DeviceItem::Gpu).collect(),
        DeviceSpec::List(items) => items.clone(),
    };
    let gpu = |i: usize| {
        gpus.get(i).map(|g| g.index).ok_or(DeviceError::NoSuchGpu {
            index: i,
            count: gpus.len(),
        })
    };
    if split != SplitMode::None {
        let name = if split == SplitMode::Layer {
            "layer"
        } else {
            "row"
        };
        let mut devices = Vec::new();
        for item in &items {
            match *item {
                DeviceItem::Cpu => return Err(DeviceError::Split(name)),
                DeviceItem::Gpu(i) => {
                    let d = gpu(i)?;
                    if devices.contains(&d) {
                        return Err(DeviceError::Split(name));
                    }
                    devices.push(d);
                }
            }
        }
        if devices.len() < 2 {
            return Err(DeviceError::Split(name));
        }
        return Ok(vec![Placement::Split {
            devices,
            mode: split,
        }]);
    }
    items
        .iter()
        .map(|item| match *item {
            DeviceItem::Cpu => Ok(Placement::Cpu),
            DeviceItem::Gpu(i) => gpu(i).map(Placement::Gpu),
        })
        .collect()
}

pub use crate::engine::Admission;

struct Inner {
    engines: Vec<Engine>,
    routing: Routing,
    /// The one admission bound over all engines (`Σ slots + max_queue`).
    bound: Arc<Bound>,
    closing: AtomicBool,
    /// Requests routed to each engine, and how many of them by prefix.
    routed: Vec<(AtomicU64, AtomicU64)>,
}

/// The engines of one server. Cheap to clone. Offers the calls the HTTP
/// layer makes (admission, tokenization, submission, facts) over all of them.
#[derive(Clone)]
pub struct Engines {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engines")
            .field("engines", &self.inner.engines.len())
            .finish()
    }
}

/// How [`Engines::choose`] picks an engine (`serve --routing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Routing {
    /// The engine whose prompt cache holds most of the prompt, within
    /// [`prefix_slack`] of the least loaded; else the least loaded.
    #[default]
    Prefix,
    /// Always the least loaded engine (the prompt cache is not consulted).
    LeastLoaded,
}

/// Why [`Engines::submit`] chose an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Its prompt cache held at least half of the prompt.
    Prefix,
    /// It had the fewest requests.
    LeastLoaded,
}

impl Engines {
    /// Starts one engine per config (each loads on its own thread).
    pub fn spawn(
        configs: Vec<EngineConfig>,
        max_queue: usize,
        routing: Routing,
    ) -> Result<Engines, EngineError> {
        let engines = configs
            .into_iter()
            .map(Engine::spawn)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_engines(engines, max_queue, routing))
    }

    /// Routes over already started engines.
    pub fn from_engines(engines: Vec<Engine>, max_queue: usize, routing: Routing) -> Engines {
        let routed = engines.iter().map(|_| Default::default()).collect();
        Engines {
            inner: Arc::new(Inner {
                engines,
                routing,
                bound: Bound::new(max_queue),
                closing: AtomicBool::new(false),
                routed,
            }),
        }
    }

    /// Every engine, in `--devices` order (index = the `engine` label).
    pub fn all(&self) -> &[Engine] {
        &self.inner.engines
    }

    /// Requests refused with 429.
    pub fn rejected(&self) -> u64 {
        self.inner.bound.rejected()
    }

    /// Requests routed to engine `i`: (all, by prefix).
    pub fn routed(&self, i: usize) -> (u64, u64) {
        self.inner.routed.get(i).map_or((0, 0), |(a, p)| {
            (a.load(Ordering::Relaxed), p.load(Ordering::Relaxed))
        })
    }

    fn serving(&self) -> impl Iterator<Item = (usize, &Engine)> {
        self.inner
            .engines
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is_ready())
    }

    /// Waits until every engine has loaded or failed; fails only when none
    /// loaded (with the first engine's error).
    pub async fn ready(&self) -> Result<(), EngineError> {
        let mut first_err = None;
        let mut any = false;
        for e in &self.inner.engines {
            match e.ready().await {
                Ok(()) => any = true,
                Err(err) => {
                    first_err.get_or_insert(err);
                }
            }
        }
        match (any, first_err) {
            (true, _) => Ok(()),
            (false, Some(e)) => Err(e),
            (false, None) => Err(EngineError::Stopped),
        }
    }

    /// Every engine is loaded and serving (readiness).
    pub fn is_ready(&self) -> bool {
        self.inner.engines.iter().all(Engine::is_ready)
    }

    /// The state the server as a whole is in: `Ready` when at least one
    /// engine serves and none is loading; `Loading` while one loads;
    /// otherwise the first engine's failure.
    pub fn state(&self) -> LoadState {
        let states: Vec<LoadState> = self.inner.engines.iter().map(Engine::state).collect();
        if states.contains(&LoadState::Loading) {
            return LoadState::Loading;
        }
        if states.contains(&LoadState::Ready) {
            return LoadState::Ready;
        }
        states
            .into_iter()
            .find(|s| matches!(s, LoadState::Failed(_)))
            .unwrap_or(LoadState::Stopped)
    }

    /// A ready engine, for model-wide work (tokenizing); else why none is.
    fn any(&self) -> Result<&Engine, EngineError> {
        if let Some((_, e)) = self.serving().next() {
            return Ok(e);
        }
        Err(match self.state() {
            LoadState::Failed(e) => e,
            LoadState::Stopped => EngineError::Stopped,
            LoadState::Loading | LoadState::Ready => EngineError::NotReady,
        })
    }

    /// Facts of the model (from the first ready engine; every engine loads
    /// the same file with the same settings).
    pub fn info(&self) -> Option<&ModelInfo> {
        self.serving().next().and_then(|(_, e)| e.info())
    }

    /// Requests holding a slot, over all engines.
    pub fn running(&self) -> usize {
        self.inner.engines.iter().map(|e| e.stats().running()).sum()
    }

    /// Requests waiting for a slot, over all engines.
    pub fn waiting(&self) -> usize {
        self.inner.engines.iter().map(Engine::waiting).sum()
    }

    /// Takes a place among the `Σ slots + max_queue` requests the server
    /// holds (slots of the engines that are ready); 429 beyond.
    pub fn admit(&self) -> Result<Admission, EngineError> {
        if self.inner.closing.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        self.any()?;
        let slots: usize = self
            .serving()
            .filter_map(|(_, e)| e.info())
            .map(|i| i.slots as usize)
            .sum();
        self.inner.bound.admit(slots)
    }

    /// The engine for a prompt, and why (see the module docs and [`pick`]).
    pub fn choose(&self, prompt: &[i32]) -> Option<(usize, Route)> {
        let candidates: Vec<Candidate> = self
            .serving()
            .map(|(index, e)| Candidate {
                index,
                prefix: match self.inner.routing {
                    Routing::Prefix => e.cached_prefix(prompt),
                    Routing::LeastLoaded => 0,
                },
                load: e.in_flight(),
                slots: e.info().map_or(0, |info| info.slots as usize),
            })
            .collect();
        pick(&candidates, prompt.len())
    }

    /// Hands an admitted, validated request to an engine ([`Engines::choose`]).
    /// If no engine can take it, the stream's only event is the error.
    pub fn submit(&self, admission: Admission, req: GenerateRequest) -> GenerationStream {
        let prompt_tokens = req.prompt.len();
        let Some((i, route)) = self.choose(req.prompt.ids()) else {
            return GenerationStream::failed(
                self.any().err().unwrap_or(EngineError::Stopped),
                prompt_tokens,
            );
        };
        let engine = &self.inner.engines[i];
        match engine.accept(admission) {
            Ok(adm) => {
                if let Some((all, prefix)) = self.inner.routed.get(i) {
                    all.fetch_add(1, Ordering::Relaxed);
                    if route == Route::Prefix {
                        prefix.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tracing::debug!(engine = i, ?route, "routed");
                engine.submit(adm, req)
            }
            Err(e) => GenerationStream::failed(e, prompt_tokens),
        }
    }

    /// Admits and submits ([`Engines::admit`] then [`Engines::submit`]).
    pub fn generate(&self, req: GenerateRequest) -> Result<GenerationStream, EngineError> {
        let admission = self.admit()?;
        Ok(self.submit(admission, req))
    }

    /// Tokenizes `text` ([`Engine::tokenize`]).
    pub fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<i32>, EngineError> {
        self.any()?.tokenize(text, add_special)
    }

    /// Token texts ([`Engine::token_pieces`]).
    pub fn token_pieces(&self, tokens: &[i32]) -> Result<Vec<String>, EngineError> {
        self.any()?.token_pieces(tokens)
    }

    /// Whether `gbnf` compiles for the model ([`Engine::check_grammar`]).
    pub fn check_grammar(&self, gbnf: &str) -> Result<Result<(), String>, EngineError> {
        self.any()?.check_grammar(gbnf)
    }

    /// Token bytes ([`Engine::token_bytes`]).
    pub fn token_bytes(&self, tokens: &[i32]) -> Result<Vec<Vec<u8>>, EngineError> {
        self.any()?.token_bytes(tokens)
    }

    /// Tokens to text ([`Engine::detokenize`]).
    pub fn detokenize(&self, tokens: &[i32]) -> Result<String, EngineError> {
        self.any()?.detokenize(tokens)
    }

    /// A prompt's tokens ([`Engine::tokenize_prompt`]).
    pub fn tokenize_prompt(&self, prompt: &Prompt) -> Result<PromptTokens, EngineError> {
        self.any()?.tokenize_prompt(prompt)
    }

    /// The model's tokenizer facts ([`Engine::tokenizer_info`]).
    pub fn tokenizer_info(&self) -> Result<crate::engine::TokenizerInfo, EngineError> {
        self.any()?.tokenizer_info()
    }

    /// Strings that end an assistant turn in the model's chat template.
    pub fn turn_stops(&self) -> Result<Vec<String>, EngineError> {
        self.any()?.turn_stops()
    }

    /// Stops admitting, drains and stops every engine.
    pub async fn shutdown(&self) {
        self.inner.closing.store(true, Ordering::Release);
        futures::future::join_all(self.inner.engines.iter().map(Engine::shutdown)).await;
    }
}

/// What routing knows about one serving engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Engine index.
    pub index: usize,
    /// Longest prefix of the prompt in its free slots' prompt cache.
    pub prefix: usize,
    /// Requests running or waiting on it.
    pub load: usize,
    /// Its slots.
    pub slots: usize,
}

/// How many more requests than the least loaded engine an engine may hold
/// and still be preferred for its prompt cache: a shared system prompt must
/// not pile every request onto the engine that served it first (after one
/// request goes elsewhere, that engine holds the prompt too, and ties go to
/// the less loaded).
pub fn prefix_slack(slots: usize) -> usize {
    (slots / 16).max(2)
}

/// The routing rule: the engine with the longest cached prefix when it covers
/// at least half of the `prompt_len` tokens, has a free slot and is within
/// [`prefix_slack`] requests of the least loaded engine (ties: less loaded);
/// else the least loaded engine (ties: the lowest index).
pub fn pick(candidates: &[Candidate], prompt_len: usize) -> Option<(usize, Route)> {
    let least = candidates.iter().min_by_key(|c| (c.load, c.index))?;
    let by_prefix = candidates
        .iter()
        .filter(|c| {
            c.prefix > 0
                && 2 * c.prefix >= prompt_len
                && c.load < c.slots
                && c.load <= least.load + prefix_slack(c.slots)
        })
        .max_by_key(|c| {
            (
                c.prefix,
                std::cmp::Reverse(c.load),
                std::cmp::Reverse(c.index),
            )
        });
    Some(match by_prefix {
        Some(c) => (c.index, Route::Prefix),
        None => (least.index, Route::LeastLoaded),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: usize) -> devices::Gpu {
        devices::Gpu {
            index,
            name: format!("CUDA{}", index - 1),
            description: "test".into(),
            memory_total: 0,
        }
    }

    fn c(index: usize, prefix: usize, load: usize) -> Candidate {
        Candidate {
            index,
            prefix,
            load,
            slots: 64,
        }
    }

    #[test]
    fn routing_prefers_a_cached_prefix_within_reason() {
        use Route::*;
        // No cache anywhere: least loaded, lowest index on ties.
        assert_eq!(pick(&[c(0, 0, 3), c(1, 0, 2)], 10), Some((1, LeastLoaded)));
        assert_eq!(pick(&[c(0, 0, 2), c(1, 0, 2)], 10), Some((0, LeastLoaded)));
        // Half the prompt cached on a slightly busier engine: prefix wins.
        assert_eq!(pick(&[c(0, 0, 0), c(1, 5, 2)], 10), Some((1, Prefix)));
        // Less than half: load decides.
        assert_eq!(pick(&[c(0, 0, 0), c(1, 4, 2)], 10), Some((0, LeastLoaded)));
        // The longest prefix, then the less loaded among equal prefixes.
        assert_eq!(pick(&[c(0, 6, 1), c(1, 9, 2)], 10), Some((1, Prefix)));
        assert_eq!(pick(&[c(0, 9, 2), c(1, 9, 1)], 10), Some((1, Prefix)));
        // Too far above the least loaded (slack 4 for 64 slots), or full: load decides.
        assert_eq!(prefix_slack(64), 4);
        assert_eq!(prefix_slack(4), 2);
        assert_eq!(pick(&[c(0, 0, 1), c(1, 9, 6)], 10), Some((0, LeastLoaded)));
        let full = Candidate {
            slots: 2,
            ..c(1, 9, 2)
        };
        assert_eq!(pick(&[c(0, 0, 2), full], 10), Some((0, LeastLoaded)));
        assert_eq!(pick(&[], 10), None);
    }

    #[test]
    fn device_specs_parse() {
        assert_eq!("all".parse::<DeviceSpec>(), Ok(DeviceSpec::All));
        assert_eq!(
            "0, 1".parse::<DeviceSpec>(),
            Ok(DeviceSpec::List(vec![
                DeviceItem::Gpu(0),
                DeviceItem::Gpu(1)
            ]))
        );
        assert_eq!(
            "cpu,cpu".parse::<DeviceSpec>(),
            Ok(DeviceSpec::List(vec![DeviceItem::Cpu, DeviceItem::Cpu]))
        );
        assert!(matches!(
            "0,x".parse::<DeviceSpec>(),
            Err(DeviceError::Syntax(_))
        ));
        assert!("".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn placements_follow_devices_and_split_mode() {
        // Registry indices: 0 is the CPU, the GPUs follow.
        let gpus = [gpu(1), gpu(2)];
        let all = DeviceSpec::All;
        assert_eq!(
            placements(&all, SplitMode::None, &gpus, None),
            Ok(vec![Placement::Gpu(1), Placement::Gpu(2)])
        );
        assert_eq!(
            placements(&all, SplitMode::None, &[], None),
            Ok(vec![Placement::Auto])
        );
        assert_eq!(
            placements(&all, SplitMode::None, &gpus, Some(0)),
            Ok(vec![Placement::Auto])
        );
        let one: DeviceSpec = "1".parse().expect("spec");
        assert_eq!(
            placements(&one, SplitMode::None, &gpus, None),
            Ok(vec![Placement::Gpu(2)])
        );
        assert_eq!(
            placements(&all, SplitMode::Layer, &gpus, None),
            Ok(vec![Placement::Split {
                devices: vec![1, 2],
                mode: SplitMode::Layer
            }])
        );
        let cpus: DeviceSpec = "cpu,cpu".parse().expect("spec");
        assert_eq!(
            placements(&cpus, SplitMode::None, &[], None),
            Ok(vec![Placement::Cpu, Placement::Cpu])
        );
        assert_eq!(
            placements(&cpus, SplitMode::Layer, &[], None),
            Err(DeviceError::Split("layer"))
        );
        let three: DeviceSpec = "0,2".parse().expect("spec");
        assert_eq!(
            placements(&three, SplitMode::None, &gpus, None),
            Err(DeviceError::NoSuchGpu { index: 2, count: 2 })
        );
        assert_eq!(
            placements(&one, SplitMode::Row, &gpus, None),
            Err(DeviceError::Split("row"))
        );
    }
}
