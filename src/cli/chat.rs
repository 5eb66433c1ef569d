//! `airavata chat [MODEL]`: a terminal chat on the engine, in-process (no
//! HTTP).
//!
//! The model is resolved as `serve` resolves it ([`super::ModelArgs`]);
//! requests go through the same checks, defaults and chat format as
//! `POST /v1/chat/completions` ([`validate::check`] with [`validate::CHAT`],
//! [`Prompt::Chat`]), so a conversation here and over HTTP reads the same
//! tokens. Answers stream to stdout; everything else (progress, logs, the
//! statistics line) goes to stderr.
//!
//! * `-p TEXT`: answer one message, print only the answer (and a newline) on
//!   stdout, exit.
//! * interactive: a line editor with history; `/reset` forgets the
//!   conversation, `/exit` (or Ctrl-D, or Ctrl-C twice at the prompt) quits;
//!   Ctrl-C during an answer stops that answer and returns to the prompt.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use rustyline::error::ReadlineError;

use super::ModelArgs;
use crate::engine::{
    ChatMessage, Completion, Engine, EngineConfig, Event, FlashAttn, GenerationStream, Prompt,
    Role, ToggleHelp,
};
use crate::router::{Engines, Routing};
use crate::server::validate::{
    self, GenerationInput, RequestError, SamplingFields, ValidationError,
};

/// `airavata chat`'s sampling defaults: llama.cpp's (`llama-cli`,
/// `llama-server`'s page), which suit small models better than the OpenAI
/// route's (temperature 1, no top-k or min-p).
pub struct ChatSampling {
    /// Softmax temperature.
    pub temperature: f32,
    /// Top-k.
    pub top_k: i32,
    /// Nucleus mass.
    pub top_p: f32,
    /// Min-p.
    pub min_p: f32,
}

/// The values of [`ChatSampling`].
pub const CHAT_SAMPLING: ChatSampling = ChatSampling {
    temperature: 0.8,
    top_k: 40,
    top_p: 0.95,
    min_p: 0.05,
};

/// `airavata chat` flags.
#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Answer this one message, print only the answer on stdout, and exit
    /// (`-` reads the message from stdin).
    #[arg(short = 'p', long = "prompt", value_name = "TEXT")]
    pub prompt: Option<String>,
    /// System prompt for the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// Softmax temperature (0 = greedy). The sampling defaults are
    /// llama.cpp's, which keep small models from rambling.
    #[arg(long, default_value_t = CHAT_SAMPLING.temperature)]
    pub temperature: f32,
    /// Top-k (0 = off).
    #[arg(long, default_value_t = CHAT_SAMPLING.top_k)]
    pub top_k: i32,
    /// Nucleus mass.
    #[arg(long, default_value_t = CHAT_SAMPLING.top_p)]
    pub top_p: f32,
    /// Min-p (0 = off).
    #[arg(long, default_value_t = CHAT_SAMPLING.min_p)]
    pub min_p: f32,
    /// Most tokens per answer [default: the room left in the context].
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// RNG seed [default: random].
    #[arg(long)]
    pub seed: Option<u32>,
    /// Context size in tokens (the whole conversation must fit)
    /// [default: the model's training context].
    #[arg(long)]
    pub ctx_size: Option<u32>,
    /// Layers to offload to the GPU [default: all when a GPU backend is present, else 0].
    #[arg(long)]
    pub n_gpu_layers: Option<u32>,
    /// CPU threads [default: all available].
    #[arg(long)]
    pub threads: Option<u32>,
    /// Chat template: a built-in name (`airavata`, `chatml`) or a file of
    /// Jinja text [default: the model's `tokenizer.chat_template`, else
    /// `airavata`].
    #[arg(long, value_name = "FILE|NAME")]
    pub chat_template: Option<String>,
    /// Flash attention: auto, on or off.
    #[arg(long, value_parser = FlashAttn::parser(ToggleHelp::FLASH_ATTN), default_value_t = FlashAttn::default())]
    pub flash_attn: FlashAttn,
    /// Directory to load ggml backend libraries from (dynamic-backends builds).
    #[arg(long)]
    pub backends_dir: Option<PathBuf>,
    /// Testing aid: sleep this many milliseconds after every decode step
    /// (`test-support` builds only).
    #[cfg(feature = "test-support")]
    #[arg(long, hide = true)]
    pub step_delay_ms: Option<u64>,
}

impl ChatArgs {
    /// One conversation at a time: one slot holding the whole context, whose
    /// KV is kept between turns (earlier turns are not evaluated again).
    fn engine_config(&self, model: PathBuf) -> EngineConfig {
        EngineConfig {
            n_gpu_layers: self.n_gpu_layers,
            ctx_size: self.ctx_size,
            parallel: 1,
            threads: self.threads,
            flash_attn: self.flash_attn,
            max_queue: 1,
            backends_dir: self.backends_dir.clone(),
            cache_prompts: true,
            chat_template: self.chat_template.clone(),
            #[cfg(feature = "test-support")]
            step_delay: self.step_delay_ms.map(std::time::Duration::from_millis),
            ..EngineConfig::new(model)
        }
    }

    /// The sampling settings as the startup line shows them.
    fn sampling_line(&self) -> String {
        format!(
            "temperature {}, top-k {}, top-p {}, min-p {}",
            self.temperature, self.top_k, self.top_p, self.min_p
        )
    }

    fn input(&self, messages: Vec<ChatMessage>) -> GenerationInput {
        GenerationInput {
            prompt: Prompt::Chat(messages),
            max_tokens: self.max_tokens,
            logprobs: None,
            echo: false,
            fields: SamplingFields {
                temperature: Some(self.temperature),
                top_k: Some(self.top_k),
                top_p: Some(self.top_p),
                min_p: Some(self.min_p),
                seed: self.seed,
                stream: true,
                ..SamplingFields::default()
            },
            unknown: Default::default(),
        }
    }
}

/// Runs `airavata chat`.
pub fn run_chat(a: ChatArgs) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let one_shot = match a.prompt.as_deref() {
        Some("-") => {
            let text = std::io::read_to_string(std::io::stdin())?;
            Some(text.trim_end_matches(['\n', '\r']).to_string())
        }
        other => other.map(str::to_string),
    };
    // Ctrl-C while resolving stops a conversion cleanly (as in `serve`).
    let gguf = {
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cancel);
        let watcher = rt.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, Ordering::SeqCst);
            }
        });
        let gguf = a.model.resolve(&cancel);
        watcher.abort();
        gguf?
    };
    // From here on Ctrl-C is ours: it never kills the process by default.
    let engine = rt.block_on(async {
        tokio::select! {
            e = Engine::start(a.engine_config(gguf)) => e.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted while loading the model")),
        }
    })?;
    // One engine behind the server's router, so turns go through the very
    // `validate` the HTTP routes use.
    let engine = Engines::from_engines(vec![engine], 1, Routing::LeastLoaded);
    let chat = Chat { args: &a, engine };
    let result = match one_shot {
        Some(text) => chat.one_shot(&rt, text),
        None => chat.interactive(&rt),
    };
    rt.block_on(chat.engine.shutdown());
    result
}

struct Chat<'a> {
    args: &'a ChatArgs,
    engine: Engines,
}

/// How an answer ended.
enum Ending {
    /// Generation finished (end of text, stop string or token limit).
    Done(Completion),
    /// Ctrl-C: the request was cancelled.
    Interrupted,
}

impl Chat<'_> {
    /// Validates and submits the conversation through
    /// `/v1/chat/completions`' own [`validate::validate`].
    fn submit(
        &self,
        rt: &tokio::runtime::Runtime,
        history: &[ChatMessage],
    ) -> Result<GenerationStream, RequestError> {
        let input = self
            .args
            .input(conversation(self.args.system.as_deref(), history));
        let v = rt.block_on(validate::validate(
            &self.engine,
            input,
            validate::CHAT,
            None,
        ))?;
        Ok(self.engine.submit(v.admission, v.request))
    }

    /// Streams one answer to stdout; Ctrl-C cancels it.
    fn answer(
        &self,
        rt: &tokio::runtime::Runtime,
        history: &[ChatMessage],
    ) -> Result<(String, Ending)> {
        let mut gen = self.submit(rt, history)?;
        rt.block_on(async move {
            let mut out = std::io::stdout().lock();
            let mut text = String::new();
            let interrupt = tokio::signal::ctrl_c();
            tokio::pin!(interrupt);
            loop {
                tokio::select! {
                    ev = gen.next_event() => match ev {
                        Some(Event::Text(t)) => {
                            out.write_all(t.as_bytes())?;
                            out.flush()?;
                            text.push_str(&t);
                        }
                        Some(Event::Done(c)) => return Ok((text, Ending::Done(c))),
                        Some(Event::Error(e)) => return Err(e.into()),
                        // Not asked for (`logprobs: None`).
                        Some(Event::Logprobs(_) | Event::PromptLogprobs(_)) => {}
                        None => bail!("the engine stopped"),
                    },
                    // Dropping `gen` (on return) cancels the request.
                    _ = &mut interrupt => return Ok((text, Ending::Interrupted)),
                }
            }
        })
    }

    fn one_shot(&self, rt: &tokio::runtime::Runtime, text: String) -> Result<()> {
        let history = [ChatMessage::text(Role::User, text)];
        let (_, ending) = self.answer(rt, &history)?;
        let mut out = std::io::stdout().lock();
        out.write_all(b"\n")?;
        out.flush()?;
        match ending {
            Ending::Done(c) => {
                stats_line(&c, self.engine.info().map(|i| i.n_ctx_slot));
                Ok(())
            }
            Ending::Interrupted => {
                eprintln!("interrupted");
                drop(out);
                std::process::exit(130);
            }
        }
    }

    fn interactive(&self, rt: &tokio::runtime::Runtime) -> Result<()> {
        let mut editor = rustyline::DefaultEditor::new()?;
        let n_ctx = self.engine.info().map(|i| i.n_ctx_slot);
        eprintln!(
            "chat with {} (context {} tokens; {}). /reset forgets the conversation, /exit \
             quits; Ctrl-C stops an answer.",
            self.engine
                .info()
                .map_or_else(String::new, |i| i.path.display().to_string()),
            n_ctx.map_or_else(|| "?".into(), |n| n.to_string()),
            self.args.sampling_line(),
        );
        let mut history: Vec<ChatMessage> = Vec::new();
        let mut interrupts = 0;
        loop {
            let line = match editor.readline(">>> ") {
                Ok(line) => line,
                Err(ReadlineError::Interrupted) => {
                    interrupts += 1;
                    if interrupts >= 2 {
                        return Ok(());
                    }
                    eprintln!("(Ctrl-C again, Ctrl-D or /exit to quit)");
                    continue;
                }
                Err(ReadlineError::Eof) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            interrupts = 0;
            let text = line.trim();
            if text.is_empty() {
                continue;
            }
            let _ = editor.add_history_entry(text);
            match text {
                "/exit" | "/quit" => return Ok(()),
                "/reset" | "/clear" => {
                    history.clear();
                    eprintln!("(conversation cleared)");
                    continue;
                }
                "/help" => {
                    eprintln!("/reset forgets the conversation, /exit quits; Ctrl-C stops an answer, Ctrl-D quits.");
                    continue;
                }
                _ if text.starts_with('/') && !text.contains(char::is_whitespace) => {
                    eprintln!("unknown command {text}: /reset, /exit or /help");
                    continue;
                }
                _ => {}
            }
            history.push(ChatMessage::text(Role::User, line));
            match self.answer(rt, &history) {
                Ok((answer, ending)) => {
                    println!();
                    match ending {
                        Ending::Done(c) => stats_line(&c, n_ctx),
                        Ending::Interrupted => eprintln!("[stopped]"),
                    }
                    history.push(ChatMessage::text(Role::Assistant, answer));
                }
                Err(e) => {
                    // The turn is dropped; the conversation stays as it was.
                    history.pop();
                    eprintln!("error: {e:#}");
                    if matches!(
                        e.downcast_ref::<RequestError>(),
                        Some(RequestError::Invalid(
                            ValidationError::ContextExceeded { .. }
                        ))
                    ) {
                        eprintln!("(the conversation no longer fits the context: /reset starts a new one)");
                    }
                }
            }
        }
    }
}

/// The messages sent for a turn: the system prompt (if any), then the history.
fn conversation(system: Option<&str>, history: &[ChatMessage]) -> Vec<ChatMessage> {
    let system = system.map(|s| ChatMessage::text(Role::System, s.to_string()));
    system.into_iter().chain(history.iter().cloned()).collect()
}

/// `[N tokens, R tokens/s, context U/C]` on stderr.
fn stats_line(c: &Completion, n_ctx: Option<u32>) {
    let used = c.usage.prompt_tokens + c.usage.completion_tokens;
    eprintln!(
        "[{} tokens, {:.1} tokens/s, context {used}/{}]",
        c.usage.completion_tokens,
        c.timings.tokens_per_second,
        n_ctx.map_or_else(|| "?".into(), |n| n.to_string()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        chat: ChatArgs,
    }

    #[test]
    fn sampling_defaults_are_llama_cpps() {
        let a = Cli::try_parse_from(["chat", "m.gguf"]).expect("parse").chat;
        let c = validate::check(a.input(Vec::new()), validate::CHAT).expect("valid");
        assert_eq!(
            (
                c.sampling.temperature,
                c.sampling.top_k,
                c.sampling.top_p,
                c.sampling.min_p
            ),
            (0.8, 40, 0.95, 0.05)
        );
        assert_eq!(
            a.sampling_line(),
            "temperature 0.8, top-k 40, top-p 0.95, min-p 0.05"
        );
        // Flags override them, through the same checks as HTTP.
        let greedy = Cli::try_parse_from(["chat", "m.gguf", "--temperature", "0", "--top-k", "0"])
            .expect("parse")
            .chat;
        let g = validate::check(greedy.input(Vec::new()), validate::CHAT).expect("valid");
        assert_eq!((g.sampling.temperature, g.sampling.top_k), (0.0, 0));
        let bad = Cli::try_parse_from(["chat", "m.gguf", "--min-p", "2"])
            .expect("parse")
            .chat;
        let e = validate::check(bad.input(Vec::new()), validate::CHAT).expect_err("min-p 2");
        assert_eq!(e.field(), "min_p");
        assert_eq!(a.max_tokens, None);
        assert_eq!(a.model.model, "m.gguf");
        assert_eq!(a.model.revision, "main");
    }

    #[test]
    fn one_conversation_uses_the_whole_context() {
        let a = Cli::try_parse_from(["chat", "m.gguf", "--ctx-size", "1024", "-p", "नमस्ते"])
            .expect("parse")
            .chat;
        assert_eq!(a.prompt.as_deref(), Some("नमस्ते"));
        let cfg = a.engine_config("m.gguf".into());
        assert_eq!((cfg.parallel, cfg.ctx_size), (1, Some(1024)));
        assert!(cfg.cache_prompts);
    }

    #[test]
    fn system_prompt_comes_first() {
        let user = ChatMessage::text(Role::User, "भारत की राजधानी?");
        let msgs = conversation(Some("संक्षेप में"), std::slice::from_ref(&user));
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0], ChatMessage::text(Role::System, "संक्षेप में"));
        assert_eq!(msgs[1], user);
        assert_eq!(conversation(None, std::slice::from_ref(&user)), vec![user]);
    }
}
