//! How this engine turns a prompt into text: the model's own chat template
//! (`tokenizer.chat_template` in the GGUF, or `--chat-template`), rendered by
//! [`crate::chat_template`] with the model's BOS/EOS text, and the strings
//! that end an assistant turn in that template.
//!
//! A GGUF without a template gets Airavata's format (the built-in
//! `airavata`, from the model card's `create_prompt_with_chat_format`). The
//! rendered text is tokenized as llama.cpp's server does: special-token text
//! is parsed (the template writes the model's control tokens as text), and a
//! BOS the template wrote is not added twice.

use llama_cpp_2::model::LlamaModel;

use crate::chat_template::{self as template, ChatTemplate, RenderInput, TemplateError};
pub use crate::chat_template::{Message as ChatMessage, MessageRole as Role};

use super::EngineError;

/// The GGUF key that holds a model's chat template.
pub const TEMPLATE_KEY: &str = "tokenizer.chat_template";

/// A loaded model's prompt format.
#[derive(Debug)]
pub struct PromptFormat {
    template: ChatTemplate,
    /// Where the template came from, for `/info` and the startup line.
    origin: String,
    bos: String,
    eos: String,
    add_bos: bool,
    stops: Vec<String>,
}

impl PromptFormat {
    /// The format of `model`: `spec` (`--chat-template FILE|NAME`) when
    /// given, else the GGUF's template, else the built-in `airavata`.
    pub fn load(model: &LlamaModel, spec: Option<&str>) -> Result<Self, EngineError> {
        let bad = |e: TemplateError| {
            EngineError::Load(format!(
                "{e} (pass --chat-template with a built-in name or a Jinja file to override it)"
            ))
        };
        let (template, origin) = match spec {
            Some(spec) => (template::resolve(spec).map_err(bad)?, spec.to_string()),
            None => match model.meta_val_str(TEMPLATE_KEY) {
                Ok(src) if !src.trim().is_empty() => {
                    (ChatTemplate::new(src).map_err(bad)?, "the GGUF".into())
                }
                _ => (
                    ChatTemplate::for_model(None).map_err(bad)?,
                    template::DEFAULT_BUILTIN.into(),
                ),
            },
        };
        let vocab = model.vocab();
        let text = |t| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
        let (bos, eos) = (text(vocab.bos()), text(vocab.eos()));
        // Whether llama.cpp prepends BOS: what tokenizing nothing with
        // specials on gives.
        let add_bos = !vocab.tokenize(b"", true, false).is_empty();
        let stops = template.end_of_turn(&bos, &eos).stops;
        Ok(Self {
            template,
            origin,
            bos,
            eos,
            add_bos,
            stops,
        })
    }

    /// The conversation as the model reads it, ending where the assistant's
    /// answer starts; and whether llama.cpp should still prepend BOS.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
    ) -> Result<(String, bool), EngineError> {
        let text = self
            .template
            .render(&RenderInput {
                messages,
                tools,
                add_generation_prompt: true,
                bos_token: &self.bos,
                eos_token: &self.eos,
            })
            .map_err(|e| EngineError::Template(e.to_string()))?;
        // A template that writes BOS itself (Llama-2 style) gets it once.
        match text.strip_prefix(self.bos.as_str()) {
            Some(rest) if self.add_bos && !self.bos.is_empty() => Ok((rest.to_string(), true)),
            _ => Ok((text, self.add_bos)),
        }
    }

    /// Strings that end an assistant turn in this template (its end-of-turn
    /// marker and the model's EOS text).
    pub fn stops(&self) -> &[String] {
        &self.stops
    }

    /// `GGUF`, a built-in name or the `--chat-template` argument.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// What a client needs to tokenize as this engine does: the model's
    /// BOS/EOS text, whether BOS is prepended, the template's source.
    pub fn tokenizer_info(&self) -> TokenizerInfo {
        TokenizerInfo {
            bos_token: self.bos.clone(),
            eos_token: self.eos.clone(),
            add_bos_token: self.add_bos,
            chat_template: self.template.source().to_string(),
        }
    }
}

/// The tokenizer facts `GET /tokenizer_info` reports (the names vLLM's route
/// uses, which lm-evaluation-harness's remote tokenizer reads).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenizerInfo {
    /// The model's BOS token text.
    pub bos_token: String,
    /// The model's EOS token text.
    pub eos_token: String,
    /// Whether tokenizing with specials prepends BOS.
    pub add_bos_token: bool,
    /// The chat template's Jinja source.
    pub chat_template: String,
}
