//! When and how `convert` and `quantize` calibrate.
//!
//! With a low-bit scheme (`nf4`, `q4_0`, `q4_k`) the default is
//! [`Calibrate::Auto`]: the model is run through llama.cpp on the built-in
//! Hindi/English text (or `--calibration FILE`) and its activation statistics
//! drive both the importance weights and the error-feedback rounding — when
//! that fits the time budget: always with a GPU backend, and on CPU when the
//! forward passes take at most [`CPU_BUDGET_SECS`] (fewer tokens are used when
//! that keeps at least [`MIN_TOKENS`]). On CPU an up-front bound rules out
//! what cannot fit even on the fastest CPU; otherwise a 64-token probe
//! measures this machine's pace before any chunk (saying how long the minimum
//! would take, and that `--calibrate` forces it, when it does not fit), each
//! chunk's pace then decides how many follow, and progress shows an ETA. Otherwise the fallback is
//! llama-quantize's own default for the scheme (its type mix and ggml's
//! reference rounding, byte-identical), so it is never worse than that.
//! A checkpoint is first written as a temporary Q8_0 GGUF for llama.cpp to run.

use super::pipeline::{self, Encoding};
use super::{ConvertError, ConvertOptions, Prepared, Progress, Scheme, Silent, TypePolicy};
use crate::calib::{self, Calibration, CollectOptions, Provenance};
use crate::quant::QuantMode;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// Time budget for calibrating on CPU: what a user converting a model once
/// accepts for a file with half the KL-divergence.
pub const CPU_BUDGET_SECS: f64 = 900.0;
/// Fewest tokens worth calibrating with.
pub const MIN_TOKENS: usize = 4096;
/// CPU throughput per core for the up-front estimate, a ceiling: a model that
/// cannot fit even at this speed is not tried (nor its temporary Q8_0 file
/// written); the rest is measured, first by a short probe, then chunk by
/// chunk (`calib::collect`). Measured on 512-token chunks of a Q8_0 model it
/// spans more than 10x across CPUs: ~61 GFLOPS per core for the 7B shape on
/// this repository's 2-core machine (Xeon with AMX-INT8, 57.6 s a chunk),
/// ~14 for SmolLM2-135M there, ~4.5 for the 7B on a 32-core host's build
/// without AMX. A fixed estimate below the fast end skipped calibrations that
/// fit (a 7B on those 2 cores: "at least 47 min" for what takes ~8).
const CPU_FLOPS_PER_CORE_CEILING: f64 = 150e9;

/// Whether and how to calibrate.
#[derive(Debug, Clone, Default)]
pub enum Calibrate {
    /// No statistics.
    #[default]
    Off,
    /// Importance from a llama-imatrix file (GGUF or legacy .dat).
    Imatrix(PathBuf),
    /// Run the model on `text` (None: the built-in text); `auto` skips the
    /// run (with a notice) when it does not fit the time budget.
    Collect {
        text: Option<PathBuf>,
        opts: CollectOptions,
        auto: bool,
    },
}

impl Calibrate {
    /// The default of the command line: collect within the budget.
    pub fn auto(text: Option<PathBuf>) -> Self {
        Self::Collect {
            text,
            opts: CollectOptions::default(),
            auto: true,
        }
    }
}

/// One line for reports.
pub fn describe(p: &Provenance) -> String {
    match p.method {
        "imatrix" => format!("imatrix {}", p.dataset),
        _ => format!(
            "{} ({} tokens{})",
            p.dataset,
            p.tokens,
            if p.hessian_block > 0 {
                format!(", error feedback over blocks of {}", p.hessian_block)
            } else {
                String::new()
            }
        ),
    }
}

/// The text to calibrate on and its name.
fn text(path: Option<&Path>) -> Result<(String, String), ConvertError> {
    match path {
        None => Ok((calib::BUILTIN_TEXT.to_string(), calib::BUILTIN_NAME.into())),
        Some(p) => {
            let t = std::fs::read_to_string(p).map_err(|e| ConvertError::Io(p.to_path_buf(), e))?;
            if t.trim().is_empty() {
                return Err(ConvertError::Config {
                    path: p.to_path_buf(),
                    msg: "calibration text is empty".into(),
                });
            }
            Ok((t, p.display().to_string()))
        }
    }
}

/// Tokens to use on `cores` CPU cores (or a GPU), or None when calibration
/// does not fit the budget.
fn budget_on(n_params: u64, gpu: bool, want: usize, cores: usize) -> Option<usize> {
    if gpu {
        return Some(want);
    }
    let fit = (CPU_BUDGET_SECS / cpu_secs_per_token(n_params, cores)) as usize;
    let tokens = want.min(fit);
    (tokens >= MIN_TOKENS).then_some(tokens)
}

/// The up-front lower bound of one token's forward pass on `cores` CPU cores.
fn cpu_secs_per_token(n_params: u64, cores: usize) -> f64 {
    2.0 * n_params as f64 / (CPU_FLOPS_PER_CORE_CEILING * cores.max(1) as f64)
}

/// `12 min`, `1.8 h`, `40 s`.
fn human_secs(secs: f64) -> String {
    if secs >= 5400.0 {
        format!("{:.1} h", secs / 3600.0)
    } else if secs >= 90.0 {
        format!("{:.0} min", secs / 60.0)
    } else {
        format!("{secs:.0} s")
    }
}

/// What to do instead, for the notices of a skipped calibration.
const FORCE_HINT: &str =
    "pass --calibrate to calibrate anyway, --calibration FILE to use your own \
     text, or --no-calibration to silence this";

/// Tokens to collect and whether a GPU runs them, or None (after saying so)
/// when an automatic calibration does not fit the budget.
fn plan_tokens(n_params: u64, how: &Calibrate) -> Result<Option<(usize, bool)>, ConvertError> {
    let Calibrate::Collect { opts, auto, .. } = how else {
        return Ok(None);
    };
    crate::engine::llama_backend(opts.backends_dir.as_deref())
        .map_err(|e| calib::CalibError::Llama(e.to_string()))?;
    let gpu = calib::gpu_available() && opts.n_gpu_layers > 0;
    if !*auto {
        return Ok(Some((opts.max_tokens, gpu)));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match budget_on(n_params, gpu, opts.max_tokens, cores) {
        Some(n) => Ok(Some((n, gpu))),
        None => {
            let secs = cpu_secs_per_token(n_params, cores) * MIN_TOKENS as f64;
            eprintln!(
                "calibration skipped: no GPU backend, and {MIN_TOKENS} tokens of a {:.2} B-parameter \
                 model would take at least {} on {cores} CPU cores (the budget is {}); writing \
                 llama-quantize's default mix with ggml's reference rounding ({FORCE_HINT})",
                n_params as f64 / 1e9,
                human_secs(secs),
                human_secs(CPU_BUDGET_SECS),
            );
            Ok(None)
        }
    }
}

/// Collect statistics from `gguf` per `how`, or explain why not.
fn collect_for(
    gguf: &Path,
    n_params: u64,
    how: &Calibrate,
    quiet: bool,
    cancel: &AtomicBool,
) -> Result<Option<Calibration>, ConvertError> {
    match how {
        Calibrate::Off => Ok(None),
        Calibrate::Imatrix(p) => {
            let m = super::load_imatrix(p)?;
            Ok(Some(Calibration::from_imatrix(&m, p)))
        }
        Calibrate::Collect {
            text: t,
            opts,
            auto,
        } => {
            let (txt, name) = text(t.as_deref())?;
            let Some((tokens, gpu)) = plan_tokens(n_params, how)? else {
                return Ok(None);
            };
            let o = CollectOptions {
                max_tokens: tokens,
                progress: !quiet,
                time_budget: (*auto && !gpu)
                    .then(|| std::time::Duration::from_secs_f64(CPU_BUDGET_SECS)),
                min_tokens: if *auto { MIN_TOKENS } else { 0 },
                ..opts.clone()
            };
            if !quiet {
                eprintln!(
                    "calibrating on {name} (up to {tokens} tokens, {})",
                    if gpu { "GPU" } else { "CPU" }
                );
            }
            let stats = match calib::collect_cancellable(gguf, &txt, &o, cancel) {
                Err(e @ calib::CalibError::Budget { .. }) => {
                    eprintln!(
                        "calibration skipped: {e}; writing llama-quantize's default mix with ggml's \
                         reference rounding ({FORCE_HINT})"
                    );
                    return Ok(None);
                }
                Err(calib::CalibError::Cancelled) => return Err(ConvertError::Cancelled),
                r => r?,
            };
            Ok(Some(Calibration::from_stats(&stats, &name)?))
        }
    }
}

/// Calibration for converting checkpoint `p` (writes and removes a
/// temporary Q8_0 GGUF in the output's folder when statistics are collected).
pub fn for_checkpoint(
    opts: &ConvertOptions,
    p: &Prepared,
    cancel: &AtomicBool,
) -> Result<Option<Calibration>, ConvertError> {
    if !opts.policy.scheme.is_low_bit() {
        return Ok(None);
    }
    let n = super::total_elems(p);
    if !matches!(opts.calibrate, Calibrate::Collect { .. }) {
        return collect_for(Path::new(""), n, &opts.calibrate, !opts.progress, cancel);
    }
    // Decide before writing the temporary model.
    if plan_tokens(n, &opts.calibrate)?.is_none() {
        return Ok(None);
    }
    let dir = opts
        .output
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".airavata-calibration-")
        .tempdir_in(dir)
        .map_err(|e| ConvertError::Io(dir.to_path_buf(), e))?;
    let q8 = tmp.path().join("model-q8_0.gguf");
    let policy = TypePolicy {
        scheme: Scheme::Q8_0,
        ..Default::default()
    };
    let staged = super::prepare(&opts.input, &policy, super::Statistics::None)?;
    let meta = super::metadata(&staged, Scheme::Q8_0.main_type());
    let jobs = super::hf_input::jobs(&staged, Scheme::Q8_0);
    let enc = Encoding {
        mode: QuantMode::Reference,
        calibration: None,
    };
    if opts.progress {
        eprintln!("writing a temporary Q8_0 model for calibration");
    }
    pipeline::write_gguf(&q8, &meta, &jobs, &enc, &Silent as &dyn Progress, cancel)?;
    let c = collect_for(&q8, n, &opts.calibrate, !opts.progress, cancel);
    drop(tmp);
    c
}

/// Calibration for re-quantizing `gguf` (run directly).
pub fn for_gguf(
    gguf: &Path,
    n_params: u64,
    scheme: Scheme,
    how: &Calibrate,
    quiet: bool,
    cancel: &AtomicBool,
) -> Result<Option<Calibration>, ConvertError> {
    if !scheme.is_low_bit() {
        return Ok(None);
    }
    collect_for(gguf, n_params, how, quiet, cancel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_on_cpu_and_gpu() {
        assert_eq!(budget_on(7_000_000_000, true, 16384, 2), Some(16384));
        // A 7B is tried on 2 cores (it fits on this repository's AMX Xeon:
        // 4096 tokens in ~8 min) and on 16; the measured pace decides how
        // many tokens (`collect`). A 70B on 2 cores cannot fit even at the
        // ceiling.
        for cores in [2, 16] {
            assert_eq!(budget_on(7_000_000_000, false, 16384, cores), Some(16384));
        }
        assert_eq!(budget_on(70_000_000_000, false, 16384, 2), None);
        // SmolLM2-135M on the 2-core CI machine: the whole built-in text.
        let small = budget_on(135_000_000, false, 16384, 2).expect("small model calibrates on CPU");
        assert!((11_776..=16384).contains(&small), "{small}");
        assert_eq!(
            budget_on(135_000_000, false, 16384, 1).map(|n| n >= MIN_TOKENS),
            Some(true)
        );
    }

    #[test]
    fn skip_notice_states_the_time() {
        assert_eq!(human_secs(40.0), "40 s");
        assert_eq!(human_secs(780.0), "13 min");
        assert_eq!(human_secs(6120.0), "1.7 h");
        let secs = cpu_secs_per_token(70_000_000_000, 2) * MIN_TOKENS as f64;
        // The bound is a ceiling (150 GFLOPS a core), so the notice says "at
        // least": 4096 tokens of a 70B on 2 cores, >= 32 min.
        assert!((1900.0..2000.0).contains(&secs), "{secs}");
        assert!(FORCE_HINT.contains("--calibrate "));
    }
}
