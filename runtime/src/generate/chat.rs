//! Applying a Hugging Face chat template (Jinja) to a user message, as `apply_chat_template`
//! with `add_generation_prompt=True` does.

use minijinja::{context, Environment, Error, ErrorKind};

/// Template instructions one render may execute. A chat template comes from the bundle, so it is
/// untrusted: without a bound, `{% for i in range(100000) %}{% for j in range(100000) %}` runs
/// for hours. Real chat templates render one message in a few hundred instructions.
pub const FUEL: u64 = 10_000_000;

/// The prompt text for one user `message` under `template`.
pub fn render(
    template: &str,
    message: &str,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> Result<String, Error> {
    let mut env = Environment::new();
    env.set_fuel(Some(FUEL));
    // Templates are written for Python's Jinja: string methods such as .strip() and
    // .startswith(), and a raise_exception helper transformers provides.
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, format!("the chat template refused the prompt: {msg}")))
    });
    env.add_template("chat", template)?;
    env.get_template("chat")?.render(context! {
        messages => vec![context! { role => "user", content => message }],
        add_generation_prompt => true,
        bos_token => bos_token.unwrap_or_default(),
        eos_token => eos_token.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] | trim + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_a_chatml_template_with_the_generation_prompt() {
        let text = render(CHATML, " Hi there ", None, None).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_special_tokens_work() {
        let t = "{{ bos_token }}{% for m in messages %}{{ m.content.strip().upper() }}{% endfor %}{{ eos_token }}";
        assert_eq!(render(t, " x ", Some("<s>"), Some("</s>")).unwrap(), "<s>X</s>");
    }

    #[test]
    fn a_template_that_loops_for_ever_runs_out_of_fuel() {
        let started = std::time::Instant::now();
        let t = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let err = render(t, "x", None, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutOfFuel, "{err}");
        assert!(started.elapsed().as_secs() < 30, "took {:?}", started.elapsed());
        // A real template stays far below the limit.
        assert!(render(CHATML, &"word ".repeat(10_000), None, None).is_ok());
    }

    #[test]
    fn raise_exception_is_an_error_not_a_panic() {
        let err = render("{{ raise_exception('no system role') }}", "x", None, None).unwrap_err();
        assert!(err.to_string().contains("no system role"), "{err}");
    }
}
