//! Airavata's chat format.
//!
//! From the model card (`create_prompt_with_chat_format`):
//! ```text
//! <s><|system|>\n{system}\n<|user|>\n{user}\n<|assistant|>\n{answer}</s>\n<|user|>\n...<|assistant|>\n
//! ```
//! The role tags are plain text in Airavata's vocabulary; `<s>`/`</s>` are the
//! BOS/EOS tokens. User text is tokenized without parsing special tokens, so a
//! prompt cannot inject control tokens.

use serde::{Deserialize, Serialize};

/// Who said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the assistant.
    System,
    /// The human turn.
    User,
    /// An earlier model answer.
    Assistant,
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Speaker.
    pub role: Role,
    /// Text of the turn.
    pub content: String,
}

/// A piece of a prompt: text to tokenize, or a special token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// The model's BOS token, when its vocabulary asks for one.
    Bos,
    /// The model's EOS token.
    Eos,
    /// Plain text (special tokens are not parsed).
    Text(String),
}

/// Text before a single user prompt.
pub const USER_PREFIX: &str = "<|user|>\n";
/// Text between the user prompt and the answer.
pub const ASSISTANT_PREFIX: &str = "\n<|assistant|>\n";

/// `<|user|>\n{prompt}\n<|assistant|>\n` with BOS.
pub fn user_turn(prompt: &str) -> Vec<Segment> {
    vec![
        Segment::Bos,
        Segment::Text(format!("{USER_PREFIX}{prompt}{ASSISTANT_PREFIX}")),
    ]
}

/// A whole conversation, ending with the assistant tag.
pub fn chat(messages: &[ChatMessage]) -> Vec<Segment> {
    let mut segs = vec![Segment::Bos];
    let mut text = String::new();
    for m in messages {
        match m.role {
            Role::System => {
                text.push_str("<|system|>\n");
                text.push_str(&m.content);
                text.push('\n');
            }
            Role::User => {
                text.push_str("<|user|>\n");
                text.push_str(&m.content);
                text.push('\n');
            }
            Role::Assistant => {
                text.push_str("<|assistant|>\n");
                text.push_str(m.content.trim());
                segs.push(Segment::Text(std::mem::take(&mut text)));
                segs.push(Segment::Eos);
                text.push('\n');
            }
        }
    }
    text.push_str("<|assistant|>\n");
    segs.push(Segment::Text(text));
    segs
}

/// The same conversation as one display string (for logs and tests).
pub fn render(segments: &[Segment]) -> String {
    segments
        .iter()
        .map(|s| match s {
            Segment::Bos => "<s>",
            Segment::Eos => "</s>",
            Segment::Text(t) => t.as_str(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_user_turn_matches_model_card() {
        assert_eq!(
            render(&user_turn("नमस्ते")),
            "<s><|user|>\nनमस्ते\n<|assistant|>\n"
        );
    }

    #[test]
    fn conversation_matches_model_card() {
        let msgs = vec![
            ChatMessage {
                role: Role::System,
                content: "Be brief.".into(),
            },
            ChatMessage {
                role: Role::User,
                content: "Hi".into(),
            },
            ChatMessage {
                role: Role::Assistant,
                content: " Hello! ".into(),
            },
            ChatMessage {
                role: Role::User,
                content: "भारत?".into(),
            },
        ];
        assert_eq!(
            render(&chat(&msgs)),
            "<s><|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello!</s>\n<|user|>\nभारत?\n<|assistant|>\n"
        );
    }
}
