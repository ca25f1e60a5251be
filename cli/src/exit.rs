//! Exit codes and the error type commands return.

use std::fmt;
use std::process::ExitCode;

/// What a command's exit code says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Ok = 0,
    /// Damage or verification failure found.
    Damage = 1,
    /// Usage or input error.
    Usage = 2,
    /// Store locked or unavailable.
    Unavailable = 3,
    /// An append's expected version was not the aggregate's: nothing is
    /// wrong with the store; read the aggregate again and retry.
    Conflict = 4,
}

impl From<Code> for ExitCode {
    fn from(c: Code) -> ExitCode {
        ExitCode::from(c as u8)
    }
}

/// A failed command: what to print and which code to exit with.
#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: Code::Usage,
            message: message.into(),
        }
    }

    pub fn damage(message: impl Into<String>) -> Failure {
        Failure {
            code: Code::Damage,
            message: message.into(),
        }
    }
}

/// Maps engine errors to exit codes.
impl From<strata::Error> for Failure {
    fn from(e: strata::Error) -> Failure {
        use strata::Error as E;
        let code = match &e {
            E::Locked { .. }
            | E::NotFound { .. }
            | E::Io { .. }
            | E::Closed
            | E::ReadOnly
            | E::BackupIncomplete { .. } => Code::Unavailable,
            E::Invalid(_) | E::NotAReplica { .. } => Code::Usage,
            E::Conflict { .. } => Code::Conflict,
            E::EventIdReused { .. } => Code::Damage,
            E::Log(strata::log::LogError::Io { .. } | strata::log::LogError::NotFound { .. }) => {
                Code::Unavailable
            }
            E::Log(strata::log::LogError::BeyondView { .. }) => Code::Unavailable,
            E::Outbox { source, .. }
                if !matches!(
                    source.sqlite_error_code(),
                    Some(
                        strata::projection::rusqlite::ErrorCode::DatabaseCorrupt
                            | strata::projection::rusqlite::ErrorCode::NotADatabase
                    )
                ) =>
            {
                Code::Unavailable
            }
            E::Log(_) | E::Index(_) => Code::Damage,
            _ => Code::Damage,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

impl From<strata::log::LogError> for Failure {
    fn from(e: strata::log::LogError) -> Failure {
        Failure::from(strata::Error::Log(e))
    }
}

pub type CmdResult = Result<Code, Failure>;
