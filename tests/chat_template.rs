//! Chat templates on a real checkpoint's own `tokenizer.chat_template`:
//! SmolLM2-135M-Instruct's ChatML template, read from its GGUF with our
//! reader and rendered by [`airavata::chat_template`].

mod common;

use airavata::chat_template::{ChatTemplate, Message, MessageRole, RenderInput};
use airavata::gguf::{GgufFile, GgufValue};

/// The text of token `key` (`tokenizer.ggml.bos_token_id`, …) of `f`.
fn token_text(f: &GgufFile, key: &str) -> String {
    let id = f.get_u64(key).unwrap_or_else(|| panic!("no {key}")) as usize;
    match f.get("tokenizer.ggml.tokens") {
        Some(GgufValue::Array(_, tokens)) => tokens[id].as_str().expect("token text").to_string(),
        other => panic!("tokenizer.ggml.tokens: {other:?}"),
    }
}

#[test]
fn smollm2_chatml_template_renders_exact_bytes() {
    let Some((q4, _)) = common::smollm2("smollm2_chatml_template_renders_exact_bytes") else {
        return;
    };
    let f = GgufFile::open(&q4).expect("open SmolLM2");
    let source = f
        .get_str("tokenizer.chat_template")
        .expect("SmolLM2 carries a chat template");
    assert!(source.contains("<|im_start|>"), "{source}");
    let (bos, eos) = (
        token_text(&f, "tokenizer.ggml.bos_token_id"),
        token_text(&f, "tokenizer.ggml.eos_token_id"),
    );
    assert_eq!((bos.as_str(), eos.as_str()), ("<|im_start|>", "<|im_end|>"));
    let t = ChatTemplate::for_model(Some(source)).expect("compiles");
    let render = |messages: &[Message], add_generation_prompt: bool| {
        t.render(&RenderInput {
            messages,
            tools: None,
            add_generation_prompt,
            bos_token: &bos,
            eos_token: &eos,
        })
        .expect("render")
    };

    let conversation = [
        Message::text(MessageRole::System, "You answer in Hindi."),
        Message::text(MessageRole::User, "भारत की राजधानी क्या है?"),
    ];
    assert_eq!(
        render(&conversation, true),
        "<|im_start|>system\nYou answer in Hindi.<|im_end|>\n\
         <|im_start|>user\nभारत की राजधानी क्या है?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    // Without a system turn the template inserts its own.
    assert_eq!(
        render(&conversation[1..], false),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nभारत की राजधानी क्या है?<|im_end|>\n"
    );
    // Its turns end with <|im_end|>, which is also its EOS.
    assert_eq!(
        t.end_of_turn(&bos, &eos).stops,
        vec!["<|im_end|>".to_string()]
    );
}

/// A Qwen2.5-style template (tools in the system turn, `tool_call.arguments |
/// tojson`, consecutive tool turns merged, `{%- %}` whitespace control) with
/// an OpenAI tool conversation in Hindi renders exactly what Python's Jinja2
/// renders in transformers' environment (trim_blocks, lstrip_blocks,
/// `tojson` = `json.dumps(ensure_ascii=False)`); the expected bytes were
/// produced by jinja2 3.1.6 from the same template and messages.
#[test]
fn qwen_style_tool_conversation_matches_jinja2() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates");
    let source = std::fs::read_to_string(dir.join("qwen2.5-style.jinja")).expect("template");
    let want = std::fs::read_to_string(dir.join("qwen2.5-style.tools.expected")).expect("expected");
    let t = airavata::chat_template::resolve(
        dir.join("qwen2.5-style.jinja")
            .to_str()
            .expect("utf-8 path"),
    )
    .expect("compiles");
    assert_eq!(t.source(), source);
    let tools = [serde_json::json!({
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "आज का मौसम",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        }
    })];
    let messages: Vec<Message> = serde_json::from_value(serde_json::json!([
        {"role": "user", "content": "दिल्ली में मौसम कैसा है?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"दिल्ली\", \"unit\": \"C\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\": 35}"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "धूप"}]}
    ]))
    .expect("OpenAI messages");
    let got = t
        .render(&RenderInput {
            messages: &messages,
            tools: Some(&tools),
            add_generation_prompt: true,
            bos_token: "",
            eos_token: "<|im_end|>",
        })
        .expect("render");
    assert_eq!(got, want);
    assert_eq!(
        t.end_of_turn("", "<|im_end|>").stops,
        vec!["<|im_end|>".to_string()]
    );
}
