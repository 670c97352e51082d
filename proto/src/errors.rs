//! Errors as people read them: one line with every cause, as the daemon logs and reports them
//! and the tray shows them.

/// An error and its causes as one line (`a: b: c`), skipping a cause whose text the message
/// already holds (thiserror's `#[error(transparent)]` and `{source}` repeat it).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    /// An error whose message may or may not repeat its cause's.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|cause| cause as _)
        }
    }

    #[test]
    fn the_chain_joins_every_cause_once() {
        let root = Layer("permission denied", None);
        let middle = Layer("cannot open unet/model.onnx: permission denied", Some(Box::new(root)));
        let top = Layer("loading model `m` failed", Some(Box::new(middle)));
        assert_eq!(
            error_chain(&top),
            "loading model `m` failed: cannot open unet/model.onnx: permission denied"
        );
        assert_eq!(error_chain(&Layer("alone", None)), "alone");
    }
}
