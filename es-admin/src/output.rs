//! Where the commands print: stdout for a person or a pipe. A reader that goes away (`| head`)
//! ends the output quietly instead of panicking on a broken pipe.

use std::io::{ErrorKind, Write};

use crate::AdminError;

/// The output of a command.
pub struct Out {
    writer: Box<dyn Write + Send>,
    closed: bool,
}

impl Out {
    /// Standard output.
    pub fn stdout() -> Self {
        Self::new(Box::new(std::io::stdout()))
    }

    /// Any writer (a buffer in tests).
    pub fn new(writer: Box<dyn Write + Send>) -> Self {
        Self {
            writer,
            closed: false,
        }
    }

    /// Writes one line. Once the reader went away, further lines are dropped.
    pub fn line(&mut self, line: impl std::fmt::Display) -> Result<(), AdminError> {
        if self.closed {
            return Ok(());
        }
        match writeln!(self.writer, "{line}").and_then(|()| self.writer.flush()) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Whether the reader went away.
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}
