//! A bundle's `generation.json` and `tokenizer.json`, as `kiln run --prompt [--chat]` uses them:
//! the config parsed, the chat template rendered around a message, the text encoded and decoded.

use kiln_formats::generation::GenerationConfig;
use kiln_runtime::generate::{chat, tokenizer};

/// `data` is `generation.json`, a NUL byte, then `tokenizer.json` (no NUL: no tokenizer).
pub fn config_and_tokenizer(data: &[u8]) -> Result<(), String> {
    let (config, tokenizer) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let config: Result<GenerationConfig, String> = serde_json::from_slice(config).map_err(|e| e.to_string());
    let tok = tokenizer.map(|t| tokenizer::parse(t).map_err(|e| e.to_string())).transpose();
    let mut texts = vec!["Once upon a time <|im_start|> x".to_string()];
    if let Ok(GenerationConfig { chat_template: Some(t), bos_token, eos_token, .. }) = &config {
        let rendered = chat::render(t, " Hi there ", bos_token.as_deref(), eos_token.as_deref());
        texts.push(rendered.map_err(|e| format!("chat template: {e:#}"))?);
    }
    if let Some(tok) = &tok? {
        for (text, special) in texts.iter().zip([true, false]) {
            let ids = tokenizer::encode(tok, text, special).map_err(|e| e.to_string())?;
            tokenizer::decode(tok, &ids).map_err(|e| e.to_string())?;
        }
    }
    config.map(|_| ())
}
