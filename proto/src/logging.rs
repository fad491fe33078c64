//! How the daemons log (`--log-format text|json`, `RUST_LOG` for the level): lines for
//! people, or one JSON object per line for machines — with the fields of the spans the
//! line was written in (a replica's lines carry `replica` and `service`, from the
//! controller's apply and binding to the agent's supervisor).

use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<LogFormat, String> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?}: text or json")),
        }
    }
}

/// Logs to standard error in `format`, at the level `RUST_LOG` says (else `default`).
pub fn init(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        // Every line: timestamp, level, target, the event's fields, and each enclosing
        // span with its fields (`spans`, outermost first; `span`: the innermost).
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_name() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("yaml".parse::<LogFormat>().is_err_and(|e| e.contains("text or json")));
    }
}
