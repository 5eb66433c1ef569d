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
use crate::server::validate::{self, GenerationInput};

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
    /// Softmax temperature (0 = greedy); the default is /v1/chat/completions'.
    #[arg(long, default_value_t = validate::CHAT.default_temperature)]
    pub temperature: f32,
    /// Nucleus mass; the default is /v1/chat/completions'.
    #[arg(long, default_value_t = validate::CHAT.default_top_p)]
    pub top_p: f32,
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
            #[cfg(feature = "test-support")]
            step_delay: self.step_delay_ms.map(std::time::Duration::from_millis),
            ..EngineConfig::new(model)
        }
    }

    fn input(&self, messages: Vec<ChatMessage>) -> GenerationInput {
        GenerationInput {
            prompt: Prompt::Chat(messages),
            max_tokens: self.max_tokens,
            temperature: Some(self.temperature),
            top_k: None,
            top_p: Some(self.top_p),
            min_p: None,
            repetition_penalty: None,
            frequency_penalty: None,
            presence_penalty: None,
            seed: self.seed,
            ignore_eos: false,
            response_format: None,
            grammar: None,
            logprobs: None,
            stop: None,
            stream: true,
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
    engine: Engine,
}

/// How an answer ended.
enum Ending {
    /// Generation finished (end of text, stop string or token limit).
    Done(Completion),
    /// Ctrl-C: the request was cancelled.
    Interrupted,
}

impl Chat<'_> {
    /// Validates and submits the conversation, exactly as
    /// `/v1/chat/completions` would.
    fn submit(&self, history: &[ChatMessage]) -> Result<GenerationStream> {
        let spec = validate::CHAT;
        let checked = validate::check(
            self.args
                .input(conversation(self.args.system.as_deref(), history)),
            spec,
        )?;
        let admission = self.engine.admit()?;
        let tokens = self.engine.tokenize_prompt(&checked.prompt)?;
        let n_ctx_slot = self.engine.info().map_or(0, |i| i.n_ctx_slot as usize);
        let max_new_tokens = validate::fit(tokens.len(), checked.max_tokens, n_ctx_slot, spec)?;
        let request = crate::engine::GenerateRequest {
            prompt: tokens,
            max_new_tokens,
            sampling: checked.sampling,
            stop: checked.stop,
            timeout: None,
            logprobs: None,
        };
        Ok(self.engine.submit(admission, request))
    }

    /// Streams one answer to stdout; Ctrl-C cancels it.
    fn answer(
        &self,
        rt: &tokio::runtime::Runtime,
        history: &[ChatMessage],
    ) -> Result<(String, Ending)> {
        let mut gen = self.submit(history)?;
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
                        Some(Event::Logprobs(_)) => {}
                        None => bail!("the engine stopped"),
                    },
                    // Dropping `gen` (on return) cancels the request.
                    _ = &mut interrupt => return Ok((text, Ending::Interrupted)),
                }
            }
        })
    }

    fn one_shot(&self, rt: &tokio::runtime::Runtime, text: String) -> Result<()> {
        let history = [ChatMessage {
            role: Role::User,
            content: text,
        }];
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
            "chat with {} (context {} tokens). /reset forgets the conversation, /exit quits; \
             Ctrl-C stops an answer.",
            self.engine
                .info()
                .map_or_else(String::new, |i| i.path.display().to_string()),
            n_ctx.map_or_else(|| "?".into(), |n| n.to_string()),
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
            history.push(ChatMessage {
                role: Role::User,
                content: line,
            });
            match self.answer(rt, &history) {
                Ok((answer, ending)) => {
                    println!();
                    match ending {
                        Ending::Done(c) => stats_line(&c, n_ctx),
                        Ending::Interrupted => eprintln!("[stopped]"),
                    }
                    history.push(ChatMessage {
                        role: Role::Assistant,
                        content: answer,
                    });
                }
                Err(e) => {
                    // The turn is dropped; the conversation stays as it was.
                    history.pop();
                    eprintln!("error: {e:#}");
                    if matches!(
                        e.downcast_ref::<validate::ValidationError>(),
                        Some(validate::ValidationError::ContextExceeded { .. })
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
    let system = system.map(|s| ChatMessage {
        role: Role::System,
        content: s.to_string(),
    });
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
    fn sampling_defaults_are_the_chat_routes() {
        let a = Cli::try_parse_from(["chat", "m.gguf"]).expect("parse").chat;
        let c = validate::check(a.input(Vec::new()), validate::CHAT).expect("valid");
        let http = validate::check(
            GenerationInput {
                temperature: None,
                top_p: None,
                ..a.input(Vec::new())
            },
            validate::CHAT,
        )
        .expect("valid");
        assert_eq!(c.sampling, http.sampling);
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
        let user = ChatMessage {
            role: Role::User,
            content: "भारत की राजधानी?".into(),
        };
        let msgs = conversation(Some("संक्षेप में"), std::slice::from_ref(&user));
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].role, Role::System);
        assert_eq!(msgs[0].content, "संक्षेप में");
        assert_eq!(msgs[1], user);
        assert_eq!(conversation(None, std::slice::from_ref(&user)), vec![user]);
    }
}
