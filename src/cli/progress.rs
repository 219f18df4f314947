//! Progress of long conversions and checks: a bar with throughput and ETA
//! on a terminal, plain lines (at most one every two seconds) in a log.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::datastore::convert::Progress;

/// Reports to stderr: a bar on a terminal, lines otherwise. Single-threaded:
/// one command owns it, so its fields need no lock.
pub struct ConsoleProgress {
    /// What the work is: `(to do, done)`, e.g. `("to convert", "converted")`.
    verbs: (&'static str, &'static str),
    /// Whether lines are written when stderr is not a terminal.
    lines: bool,
    bar: Option<ProgressBar>,
    files: usize,
    files_done: usize,
    total: u64,
    done: u64,
    started: Instant,
    last_line: Instant,
}

impl ConsoleProgress {
    /// A reporter for the current stderr.
    pub fn new() -> Self {
        Self {
            verbs: ("to convert", "converted"),
            lines: true,
            bar: None,
            files: 0,
            files_done: 0,
            total: 0,
            done: 0,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    /// A reporter for `vmcryptfs fsck`: a bar on a terminal, nothing
    /// otherwise (its report goes to stdout, and a log gets the report).
    pub fn for_check() -> Self {
        Self {
            verbs: ("to check", "checked"),
            lines: false,
            ..Self::new()
        }
    }

    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.done as f64 / secs;
        let eta = if rate > 0.0 {
            (self.total.saturating_sub(self.done)) as f64 / rate
        } else {
            0.0
        };
        format!(
            "{} {}/{} files, {:.1}/{:.1} MiB, {:.0} MiB/s, ETA {:.0} s",
            self.verbs.1,
            self.files_done,
            self.files,
            self.done as f64 / 1048576.0,
            self.total as f64 / 1048576.0,
            rate / 1048576.0,
            eta
        )
    }
}

impl Default for ConsoleProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for ConsoleProgress {
    fn start(&mut self, files: usize, bytes: u64) {
        self.files = files;
        self.total = bytes;
        self.started = Instant::now();
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(bytes);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                )
                .expect("a valid template"),
            );
            self.bar = Some(bar);
        } else if self.lines {
            eprintln!(
                "{} files {} ({:.1} MiB)",
                files,
                self.verbs.0,
                bytes as f64 / 1048576.0
            );
        }
    }

    fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        match &self.bar {
            Some(bar) => bar.inc(bytes),
            None if self.lines && self.last_line.elapsed() >= Duration::from_secs(2) => {
                eprintln!("{}", self.line());
                self.last_line = Instant::now();
            }
            None => {}
        }
    }

    fn file_done(&mut self, path: &Path) {
        self.files_done += 1;
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "{}/{} {}",
                self.files_done,
                self.files,
                crate::format::untrusted::path(path)
            ));
        }
    }

    fn finish(&mut self) {
        match self.bar.take() {
            Some(bar) => bar.finish_and_clear(),
            None if self.lines => eprintln!("{}", self.line()),
            None => {}
        }
    }
}
