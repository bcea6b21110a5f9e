//! Structured logs with a redaction layer.
//!
//! The code never logs secrets on purpose; this layer is the safety net for
//! what slips through (a dependency's debug line, an echoed error). Every
//! formatted line passes through [`Redactor`] before it reaches the output:
//! secrets registered at runtime (join tokens, private keys, Secret values)
//! are replaced by `<redacted>`, and so is anything shaped like a PEM private
//! key block or a JWT.

use std::io::{self, Write};
use std::sync::{Arc, RwLock};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::process::args::{LogArgs, LogFormat};

/// Placeholder written instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// Shortest value worth registering; shorter ones would redact ordinary words.
const MIN_SECRET_LEN: usize = 8;

/// Most secrets kept; the oldest are forgotten first (rotation adds new ones).
const MAX_SECRETS: usize = 64;

/// Secrets known at runtime, shared by the log writer and the code that loads them.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    secrets: Arc<RwLock<Vec<String>>>,
}

impl Redactor {
    /// A redactor with no registered secret (patterns still apply).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a secret value; it will never be written out.
    pub fn register(&self, secret: &str) {
        let secret = secret.trim();
        if secret.len() < MIN_SECRET_LEN {
            return;
        }
        let mut s = self.secrets.write().unwrap_or_else(|e| e.into_inner());
        if s.iter().any(|x| x == secret) {
            return;
        }
        if s.len() >= MAX_SECRETS {
            s.remove(0);
        }
        s.push(secret.to_owned());
    }

    /// Returns `text` with every known secret and secret-shaped token replaced.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in self
            .secrets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), REDACTED);
            }
            // Multi-line secrets (PEM) appear with escaped newlines in JSON logs.
            if s.contains('\n') {
                let escaped = s.replace('\n', "\\n");
                if out.contains(escaped.as_str()) {
                    out = out.replace(escaped.as_str(), REDACTED);
                }
            }
        }
        redact_pem_keys(&redact_jwts(&out))
    }

    /// A `MakeWriter` that redacts everything written through `inner`.
    pub fn writer<M>(&self, inner: M) -> RedactingMakeWriter<M> {
        RedactingMakeWriter {
            inner,
            redactor: self.clone(),
        }
    }
}

/// Replaces `-----BEGIN ... PRIVATE KEY----- ... -----END ... PRIVATE KEY-----`.
fn redact_pem_keys(text: &str) -> String {
    const BEGIN: &str = "-----BEGIN ";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start..];
        let header_end = after[BEGIN.len()..].find("-----").map(|i| i + BEGIN.len());
        let is_key = header_end.is_some_and(|h| after[..h].contains("PRIVATE KEY"));
        if !is_key {
            out.push_str(&rest[..start + BEGIN.len()]);
            rest = &rest[start + BEGIN.len()..];
            continue;
        }
        out.push_str(&rest[..start]);
        out.push_str(REDACTED);
        // Skip to the end marker, or to the end of the text if it is cut.
        match after.find("-----END ") {
            Some(e) => {
                let tail = &after[e + 9..];
                let close = tail
                    .find("-----")
                    .map(|i| e + 9 + i + 5)
                    .unwrap_or(after.len());
                rest = &after[close..];
            }
            None => rest = "",
        }
    }
    out.push_str(rest);
    out
}

/// Replaces `eyJ…` `.`-separated three-part base64url tokens (JWTs).
fn redact_jwts(text: &str) -> String {
    let b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while let Some(off) = text[i..].find("eyJ") {
        let start = i + off;
        if start > 0 && b64(bytes[start - 1]) {
            i = start + 3;
            continue;
        }
        let mut j = start;
        let mut dots = 0;
        let mut seg_len = 0;
        while j < bytes.len() {
            let c = bytes[j];
            if b64(c) {
                seg_len += 1;
            } else if c == b'.' && seg_len > 0 && dots < 2 {
                dots += 1;
                seg_len = 0;
            } else {
                break;
            }
            j += 1;
        }
        if dots == 2 && seg_len > 0 {
            out.push_str(&text[copied..start]);
            out.push_str(REDACTED);
            copied = j;
        }
        i = j.max(start + 3);
    }
    out.push_str(&text[copied..]);
    out
}

/// See [`Redactor::writer`].
#[derive(Clone, Debug)]
pub struct RedactingMakeWriter<M> {
    inner: M,
    redactor: Redactor,
}

/// Buffers one formatted event and writes it redacted when dropped.
pub struct RedactingWriter<W: Write> {
    inner: W,
    redactor: Redactor,
    buf: Vec<u8>,
}

impl<'a, M> MakeWriter<'a> for RedactingMakeWriter<M>
where
    M: MakeWriter<'a>,
{
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter {
            inner: self.inner.make_writer(),
            redactor: self.redactor.clone(),
            buf: Vec::with_capacity(256),
        }
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // Bounded: a single event larger than this is cut, not buffered forever.
        const MAX_EVENT: usize = 256 * 1024;
        let room = MAX_EVENT.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&data[..data.len().min(room)]);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.buf);
        let clean = self.redactor.redact(&text);
        let _ = self.inner.write_all(clean.as_bytes());
        let _ = self.inner.flush();
    }
}

/// The formatting layer the agent uses, writing through `make_writer` redacted.
pub fn layer<M>(
    format: LogFormat,
    redactor: &Redactor,
    make_writer: M,
) -> Box<dyn Layer<Registry> + Send + Sync>
where
    M: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let w = redactor.writer(make_writer);
    match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(w)
            .boxed(),
        LogFormat::Plain => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(w)
            .boxed(),
    }
}

/// Installs the global subscriber for the binary.
pub fn init(args: &LogArgs, redactor: &Redactor) -> Result<(), anyhow::Error> {
    let filter = EnvFilter::try_new(&args.log_level)
        .map_err(|e| anyhow::anyhow!("invalid --log-level {:?}: {e}", args.log_level))?;
    tracing_subscriber::registry()
        .with(layer(args.log_format, redactor, io::stderr).with_filter(filter))
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_secrets_and_secret_shapes_are_redacted() {
        let r = Redactor::new();
        r.register("s3cr3t-value-123");
        r.register("short");
        let jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        let pem = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----";
        let line = format!("token={jwt} value=s3cr3t-value-123 key={pem} short ok");
        let out = r.redact(&line);
        assert!(!out.contains("eyJhbGci"), "{out}");
        assert!(!out.contains("s3cr3t"), "{out}");
        assert!(!out.contains("MIGHAgEA"), "{out}");
        assert!(out.contains("short ok"), "{out}");
        assert_eq!(out.matches(REDACTED).count(), 3, "{out}");
    }

    #[test]
    fn json_escaped_pem_is_redacted_and_certificates_are_kept() {
        let r = Redactor::new();
        let key = "-----BEGIN EC PRIVATE KEY-----\nAAAABBBBCCCC\n-----END EC PRIVATE KEY-----\n";
        r.register(key);
        let escaped = key.replace('\n', "\\n");
        let out = r.redact(&format!("{{\"msg\":\"{escaped}\"}}"));
        assert!(!out.contains("AAAABBBB"), "{out}");
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
        assert_eq!(r.redact(cert), cert);
    }

    #[test]
    fn writer_redacts_whole_events() {
        let r = Redactor::new();
        r.register("hunter2-hunter2");
        let sink = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        {
            let mut w = RedactingWriter {
                inner: SinkWriter(sink.clone()),
                redactor: r.clone(),
                buf: Vec::new(),
            };
            w.write_all(b"password is hunter2-").unwrap();
            w.write_all(b"hunter2 ok\n").unwrap();
        }
        let got = String::from_utf8(sink.lock().unwrap().clone()).unwrap();
        assert_eq!(got, "password is <redacted> ok\n");
    }

    struct SinkWriter(Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for SinkWriter {
        fn write(&mut self, d: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(d);
            Ok(d.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}
