//! Output conventions: JSON or text on stdout, progress bars and colour
//! only on a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar on stderr, drawn only when stderr is a terminal (and,
/// with `needs_stdout_redirected`, only when stdout is not: long output to
/// a terminal is its own progress).
pub fn progress(total: u64, what: &str, needs_stdout_redirected: bool) -> ProgressBar {
    let show = std::io::stderr().is_terminal()
        && !(needs_stdout_redirected && std::io::stdout().is_terminal());
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {human_pos}/{human_len} ({per_sec}, {eta})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// `text` in red (damage) when stdout is a terminal.
pub fn red(text: &str) -> String {
    paint(text, "31")
}

/// `text` in green (clean) when stdout is a terminal.
pub fn green(text: &str) -> String {
    paint(text, "32")
}

fn paint(text: &str, code: &str) -> String {
    if std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// Prints one JSON value on its own line.
pub fn json_line(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string(value).expect("values serialise")
    );
}
