//! A rebuild's progress on the terminal (stderr, drawn only when it is one).

use es_postgres::Progress;
use indicatif::{ProgressBar, ProgressStyle};

use crate::registry::Rebuild;

pub(crate) fn bar(name: &str, how: Rebuild) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {prefix}: {pos} events ({per_sec}), {msg} [{elapsed}]",
    ) {
        bar.set_style(style);
    }
    let how = match how {
        Rebuild::BlueGreen => "building the next version",
        Rebuild::FromScratch => "rebuilding from scratch",
        Rebuild::InPlace => "rebuilding",
    };
    bar.set_prefix(format!("{how} {name}"));
    bar
}

pub(crate) fn show(bar: &ProgressBar, progress: Progress) {
    bar.set_position(progress.events);
    bar.set_message(format!(
        "at {} of {}",
        progress.position.sequence, progress.head.sequence
    ));
}
