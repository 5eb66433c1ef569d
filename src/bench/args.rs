//! Command-line arguments of `airavata bench`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use super::prompts::{PromptLengths, DEFAULT_SEED};

/// Which HTTP API the target speaks.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Api {
    /// Our `POST /generate` (`{"prompt", "max_new_tokens", "stream"}`; SSE
    /// `{"text"}` events then a `{"done": true, "usage"}` event).
    Generate,
    /// OpenAI-compatible `POST /v1/completions` (ours, llama-server, vLLM...).
    OpenaiCompletions,
    /// OpenAI-compatible `POST /v1/chat/completions`.
    OpenaiChat,
}

impl Api {
    /// The request path under the base URL.
    pub fn path(self) -> &'static str {
        match self {
            Api::Generate => "/generate",
            Api::OpenaiCompletions => "/v1/completions",
            Api::OpenaiChat => "/v1/chat/completions",
        }
    }

    /// The value as written on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Api::Generate => "generate",
            Api::OpenaiCompletions => "openai-completions",
            Api::OpenaiChat => "openai-chat",
        }
    }
}

/// What to run.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Streamed closed-loop concurrency sweep (TTFT, ITL, throughput).
    Sweep,
    /// The old FastAPI app's contract: sequential, non-streamed
    /// `POST /generate {"prompt": "how to manage time effectively?",
    /// "max_new_tokens": 50}` requests; reports latency and requests/s.
    /// Ignores `--api` and `--concurrency`.
    OldApp,
}

/// The old app's fixed prompt.
pub const OLD_APP_PROMPT: &str = "how to manage time effectively?";
/// The old app's `max_new_tokens`.
pub const OLD_APP_MAX_NEW_TOKENS: u32 = 50;
/// Default `--max-tokens` for the sweep.
pub const DEFAULT_MAX_TOKENS: u32 = 128;
/// Default `--prompt-tokens` when neither `--prompt` nor `--prompt-tokens` is given.
pub const DEFAULT_PROMPT_TOKENS: usize = 128;
/// Default number of sequential requests in the old-app scenario.
pub const OLD_APP_DEFAULT_REQUESTS: usize = 20;

/// `airavata bench`: load-test a running server (ours or any OpenAI-compatible
/// one) and write JSON / markdown / SVG reports.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Base URL of the server under test.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,

    /// API to drive.
    #[arg(long, value_enum, default_value_t = Api::Generate)]
    pub api: Api,

    /// `model` field of OpenAI payloads (omitted when not given).
    #[arg(long)]
    pub model: Option<String>,

    /// Bearer token sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "AIRAVATA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Scenario to run.
    #[arg(long, value_enum, default_value_t = Scenario::Sweep)]
    pub scenario: Scenario,

    /// Concurrency levels of the sweep (closed loop: exactly c requests in flight).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 4, 16, 32, 64])]
    pub concurrency: Vec<usize>,

    /// Measured requests per level [default: max(2*c, 8); old-app: 20];
    /// `chat:TURNS` runs ceil(N / TURNS) conversations, at least c.
    #[arg(long)]
    pub requests: Option<usize>,

    /// Unmeasured warm-up requests sent (sequentially) before the first level.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,

    /// Fixed prompt text.
    #[arg(long, conflicts_with = "prompt_tokens")]
    pub prompt: Option<String>,

    /// Synthesize a prompt of roughly N (Llama) tokens [default: 128 unless
    /// --prompt or --prompt-lengths]; the same as `--prompt-lengths fixed:N`.
    #[arg(long)]
    pub prompt_tokens: Option<usize>,

    /// Prompt lengths: `fixed:N` (every prompt ~N tokens), `mix:LO-HI` (a
    /// long-tail mix: each request's length drawn log-uniformly from
    /// [LO, HI], a prompt of the set padded to it) or `chat:TURNS`
    /// (conversations of TURNS requests, each sending the history so far and
    /// a new message, so contexts grow).
    #[arg(long, value_name = "SPEC", conflicts_with_all = ["prompt", "prompt_tokens"])]
    pub prompt_lengths: Option<PromptLengths>,

    /// JSON Lines prompt set for `mix` and `chat` (`messages` with a user
    /// turn, or `prompt`) [default: $AIRAVATA_ASSETS/eval-airavata-prompts/
    /// prompts.jsonl when present, else synthetic text].
    #[arg(long, value_name = "PATH", requires = "prompt_lengths")]
    pub prompt_file: Option<PathBuf>,

    /// Seed of the `mix` lengths and of which prompts of the set are sent.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,

    /// Tokens to generate per request; EOS is ignored where the server allows
    /// [default: 128; old-app: 50].
    #[arg(long)]
    pub max_tokens: Option<u32>,

    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,

    /// `/generate` only: send the prompt verbatim (`"raw": true`) instead of
    /// wrapping it in the chat format.
    #[arg(long)]
    pub raw: bool,

    /// Prefix each prompt with a unique tag so prompt/prefix caches can't
    /// serve it (the prompt is otherwise identical across requests).
    #[arg(long)]
    pub unique_prompts: bool,

    /// Spread requests over N groups of prompts: each request's prompt is its
    /// group's tag, then the prompt, then a tag unique to the request, so
    /// requests of a group share all but their last few tokens (a shared
    /// system prompt or document). Prefix-cache routing is measured with it.
    #[arg(long, value_name = "N", conflicts_with = "unique_prompts")]
    pub prefix_groups: Option<usize>,

    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 600.0)]
    pub timeout_s: f64,

    /// Name of this run in tables and plots [default: derived from --api and --url].
    #[arg(long)]
    pub label: Option<String>,

    /// Write the report(s) as JSON here.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Also write the markdown table here (it is always printed to stdout).
    #[arg(long, value_name = "PATH")]
    pub markdown: Option<PathBuf>,

    /// Write an SVG plot (aggregate tokens/s and TTFT p50 vs concurrency).
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,

    /// Don't run anything: combine these JSON reports (from --json) into one
    /// table/plot, one row group / line per run.
    #[arg(long, num_args = 1.., value_name = "REPORT.json")]
    pub compare: Vec<PathBuf>,
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs {
            url: "http://127.0.0.1:8000".into(),
            api: Api::Generate,
            model: None,
            api_key: None,
            scenario: Scenario::Sweep,
            concurrency: vec![1, 4, 16, 32, 64],
            requests: None,
            warmup: 2,
            prompt: None,
            prompt_tokens: None,
            prompt_lengths: None,
            prompt_file: None,
            seed: DEFAULT_SEED,
            max_tokens: None,
            temperature: 0.0,
            raw: false,
            unique_prompts: false,
            prefix_groups: None,
            timeout_s: 600.0,
            label: None,
            json: None,
            markdown: None,
            svg: None,
            compare: Vec::new(),
        }
    }
}

impl BenchArgs {
    /// Requests measured at concurrency `c`.
    pub fn requests_for(&self, c: usize) -> usize {
        match (self.requests, self.scenario) {
            (Some(n), _) => n,
            (None, Scenario::OldApp) => OLD_APP_DEFAULT_REQUESTS,
            (None, Scenario::Sweep) => (2 * c).max(8),
        }
    }

    /// Effective output length.
    pub fn max_tokens(&self) -> u32 {
        self.max_tokens.unwrap_or(match self.scenario {
            Scenario::OldApp => OLD_APP_MAX_NEW_TOKENS,
            Scenario::Sweep => DEFAULT_MAX_TOKENS,
        })
    }

    /// The prompt-length spec in effect: `--prompt-lengths`, or
    /// `fixed:N` for `--prompt-tokens N`; `None` for `--prompt` text and the
    /// old-app scenario's default prompt.
    pub fn lengths(&self) -> Option<PromptLengths> {
        if self.prompt.is_some() {
            return None;
        }
        self.prompt_lengths
            .or(match (self.prompt_tokens, self.scenario) {
                (Some(n), _) => Some(PromptLengths::Fixed(n)),
                (None, Scenario::OldApp) => None,
                (None, Scenario::Sweep) => Some(PromptLengths::Fixed(DEFAULT_PROMPT_TOKENS)),
            })
    }

    /// Effective prompt text (of `fixed:N`, `--prompt` or the old app; the
    /// first of a `mix` or `chat` run is built per request).
    pub fn prompt_text(&self) -> String {
        if let Some(p) = &self.prompt {
            return p.clone();
        }
        match (self.lengths(), self.scenario) {
            (Some(PromptLengths::Fixed(n)), _) => synth_prompt(n),
            (None, Scenario::OldApp) => OLD_APP_PROMPT.to_string(),
            _ => synth_prompt(DEFAULT_PROMPT_TOKENS),
        }
    }

    /// Label of the run.
    pub fn label(&self) -> String {
        if let Some(l) = &self.label {
            return l.clone();
        }
        let api = match self.scenario {
            Scenario::OldApp => "old-app",
            Scenario::Sweep => self.api.name(),
        };
        let host = self
            .url
            .split("://")
            .nth(1)
            .unwrap_or(&self.url)
            .trim_end_matches('/');
        format!("{api} @ {host}")
    }
}

/// Common English words that are single tokens in the Llama-2 vocabulary
/// (with their leading space), so `n` of them make a prompt of about `n`
/// tokens (plus BOS / chat wrapping).
pub(crate) const WORDS: &[&str] = &[
    "the", "time", "people", "water", "world", "day", "house", "city", "work", "light", "music",
    "river", "school", "family", "story", "road", "market", "garden", "book", "night", "power",
    "game", "money", "letter", "door", "voice", "paper", "field", "table", "window", "friend",
    "morning",
];

/// A deterministic prompt of roughly `n` Llama tokens: a request to continue
/// followed by a word list.
pub fn synth_prompt(n: usize) -> String {
    let lead = "Write a long story using these words:";
    // The lead is about 9 tokens.
    let words = n.saturating_sub(9).max(1);
    let mut s = String::with_capacity(lead.len() + words * 7);
    s.push_str(lead);
    for i in 0..words {
        s.push(' ');
        s.push_str(WORDS[(i * 7 + i / WORDS.len()) % WORDS.len()]);
    }
    s
}
