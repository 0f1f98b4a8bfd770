//! The HTTP/1.1 accept loop: hyper's connection builder with a header-read
//! timeout and a whole-body deadline, so a slow client cannot hold a
//! connection (and its task and buffers) open for as long as it likes.
//!
//! `axum::serve` sets no timer, so hyper's header timeout never fires there:
//! a socket that sends its headers one byte a minute stays open for good.
//! Here every connection gets [`ServeConfig::header_timeout`] to deliver its
//! request head (and an idle keep-alive connection the same time to start
//! its next request: hyper arms the timer whenever it waits for a head), and
//! every request [`ServeConfig::body_timeout`] from its head to the end of
//! its body; a body not received in time is answered 408 problem+json.
//!
//! Only HTTP/1.1 is served (no h2c): hyper's `http2` feature is not built.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::Router;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

/// Default time a connection has to send a complete request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a request has, from its head, to deliver its whole body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest accepted value for either timeout, in seconds (a day): a typo
/// such as `30000000` is refused rather than read as "never".
const MAX_TIMEOUT_SECS: u64 = 86_400;

/// The connection limits of [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeConfig {
    /// `ACCRUE_HEADER_TIMEOUT_SECS`: a request head (or, on a keep-alive
    /// connection, the next one) not complete in this time closes the
    /// connection.
    pub header_timeout: Duration,
    /// `ACCRUE_BODY_TIMEOUT_SECS`: a body not complete this long after its
    /// head is answered 408.
    pub body_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            header_timeout: HEADER_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
        }
    }
}

impl ServeConfig {
    /// Reads `ACCRUE_HEADER_TIMEOUT_SECS` and `ACCRUE_BODY_TIMEOUT_SECS`
    /// (whole seconds, 1 to 86,400) through `var`; unset means the default.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let secs = |name: &str, default: Duration| -> Result<Duration, String> {
            let Some(v) = var(name) else {
                return Ok(default);
            };
            match v.trim().parse::<u64>() {
                Ok(s) if (1..=MAX_TIMEOUT_SECS).contains(&s) => Ok(Duration::from_secs(s)),
                _ => Err(format!(
                    "{name}={v:?}: expected whole seconds from 1 to {MAX_TIMEOUT_SECS}"
                )),
            }
        };
        Ok(ServeConfig {
            header_timeout: secs("ACCRUE_HEADER_TIMEOUT_SECS", HEADER_TIMEOUT)?,
            body_timeout: secs("ACCRUE_BODY_TIMEOUT_SECS", BODY_TIMEOUT)?,
        })
    }

    /// [`ServeConfig::from_vars`] over the process environment.
    pub fn from_env() -> Result<Self, String> {
        Self::from_vars(|k| std::env::var(k).ok())
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting, lets every open connection finish its request in flight
/// (idle ones close at once) and returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Dropping the receiver tells every connection to shut down gracefully
    // (the senders' `closed()` resolves); each connection task holds a
    // `done` receiver, so `done_tx.closed()` resolves once all are gone.
    let (signal_tx, signal_rx) = watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(signal_rx);
    });
    let (done_tx, done_rx) = watch::channel(());
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            _ = signal_tx.closed() => break,
        };
        // Answers leave at once: without TCP_NODELAY a response written in
        // two pieces can wait for the peer's delayed acknowledgement.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        let signal_tx = signal_tx.clone();
        let done_rx = done_rx.clone();
        let router = router.clone();
        tokio::spawn(async move {
            connection(tcp, router, config, signal_tx).await;
            drop(done_rx);
        });
    }
    drop(done_rx);
    drop(listener);
    // Bounded: a client that stops reading a large answer must not keep
    // the process from exiting (a fail-stop restart waits on this).
    let drain = config.header_timeout + config.body_timeout;
    if tokio::time::timeout(drain, done_tx.closed()).await.is_err() {
        tracing::warn!(
            seconds = drain.as_secs(),
            "connections still open after the drain deadline; closing them"
        );
    }
    Ok(())
}

/// One connection: requests one after the other (HTTP/1.1 keep-alive)
/// until the peer closes, a timeout fires or the server shuts down.
async fn connection(
    tcp: tokio::net::TcpStream,
    router: Router,
    config: ServeConfig,
    signal: watch::Sender<()>,
) {
    let body_timeout = config.body_timeout;
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let req = req.map(|body| Deadline::new(body, body_timeout));
        tower::ServiceExt::oneshot(router.clone(), req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .serve_connection(TokioIo::new(tcp), service);
    let mut conn = std::pin::pin!(conn);
    let mut stopping = std::pin::pin!(signal.closed());
    let mut asked = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                // A peer that went away or timed out is not the server's
                // fault: logged for debugging only.
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection closed");
                }
                return;
            }
            _ = &mut stopping, if !asked => {
                asked = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// An accept error: a connection reset before it was accepted is the
/// peer's business; anything else (out of file descriptors) is logged and
/// the loop pauses a second rather than spinning.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept error");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The error a request body yields once its deadline passed; the guard
/// answers it 408 (see [`is_body_timeout`]).
#[derive(Debug)]
pub struct BodyTimedOut {
    pub after: Duration,
}

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body was not received within {} s",
            self.after.as_secs()
        )
    }
}

impl std::error::Error for BodyTimedOut {}

/// Whether `e` (or an error it wraps) is a [`BodyTimedOut`]; returns it.
pub fn is_body_timeout<'a>(
    mut e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a BodyTimedOut> {
    loop {
        if let Some(t) = e.downcast_ref::<BodyTimedOut>() {
            return Some(t);
        }
        e = e.source()?;
    }
}

/// A request body with a deadline counted from its head. The timer is only
/// created the first time the body is not ready, so a body that arrived
/// with its head (nearly all of them) costs nothing.
struct Deadline {
    inner: Incoming,
    started: Instant,
    after: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    fn new(inner: Incoming, after: Duration) -> Self {
        Deadline {
            inner,
            started: Instant::now(),
            after,
            sleep: None,
        }
    }
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.started + this.after;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut { after: this.after })))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_come_from_the_environment_with_defaults() {
        let none = ServeConfig::from_vars(|_| None).unwrap();
        assert_eq!(none, ServeConfig::default());
        assert_eq!(none.header_timeout, Duration::from_secs(10));
        assert_eq!(none.body_timeout, Duration::from_secs(30));
        let set = ServeConfig::from_vars(|k| match k {
            "ACCRUE_HEADER_TIMEOUT_SECS" => Some("2".into()),
            "ACCRUE_BODY_TIMEOUT_SECS" => Some(" 5 ".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(set.header_timeout, Duration::from_secs(2));
        assert_eq!(set.body_timeout, Duration::from_secs(5));
        for bad in ["0", "-1", "2.5", "ten", "", "86401"] {
            let r =
                ServeConfig::from_vars(|k| (k == "ACCRUE_BODY_TIMEOUT_SECS").then(|| bad.into()));
            assert!(r.is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_wrapped_body_timeout_is_recognised() {
        let inner = axum::Error::new(BodyTimedOut {
            after: Duration::from_secs(3),
        });
        let outer = axum::Error::new(inner);
        let found = is_body_timeout(&outer).expect("found through the chain");
        assert_eq!(found.after, Duration::from_secs(3));
        let other = axum::Error::new(std::io::Error::other("reset"));
        assert!(is_body_timeout(&other).is_none());
    }
}
