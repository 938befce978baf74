//! Push failover: the collectors listed in `[push] url`, tried in order.
//!
//! This module owns which collector a request goes to. The rule, as a pure
//! [`UrlChoice`]: a request goes first to the *current* URL (the first of the
//! list at start); when it gets no answer (connection refused or reset, timeout)
//! or a 429/5xx, the same request goes at once to the next URL of the list,
//! wrapping round, until one answers or every URL was tried once. The URL that
//! answered becomes the current one and stays so (sticky) until it fails in its
//! turn; the agent does not go back to the first URL on a timer, only when the
//! current one fails (or at restart). An answer that refuses the payload (another
//! 4xx) is final: it is the collector's verdict on the request, not an outage,
//! so it is not sent elsewhere.
//!
//! Sticking avoids flapping between collectors and keeps a host's series on one
//! collector while it is healthy. When every URL fails, the request goes back
//! to the pusher as a retry: it spools and backs off exactly as with one URL,
//! so the spool's order and acknowledgement rules are unchanged (a batch leaves
//! the spool only once a collector answered it).

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use domesday_model::vocab::PushFailure;

use crate::snapshot::PushStats;

use super::{HttpTransport, Outcome, Transport};

/// Which URL of `n` to try, and the stickiness rule, without any I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrlChoice {
    current: usize,
    n: usize,
}

impl UrlChoice {
    /// `n` URLs (at least one), starting at the first.
    pub fn new(n: usize) -> Self {
        UrlChoice { current: 0, n: n.max(1) }
    }

    /// The URL the next request goes to first.
    pub fn current(&self) -> usize {
        self.current
    }

    /// The order in which one request tries the URLs: the current one, then
    /// the following ones of the list, wrapping round; each once.
    pub fn order(&self) -> impl Iterator<Item = usize> + use<> {
        let (current, n) = (self.current, self.n);
        (0..n).map(move |k| (current + k) % n)
    }

    /// URL `i` answered (accepted or refused the request): it becomes current.
    pub fn answered(&mut self, i: usize) {
        if i < self.n {
            self.current = i;
        }
    }
}

/// A [`Transport`] over several collectors: each request walks [`UrlChoice::order`]
/// until one answers.
pub(crate) struct Failover<T> {
    targets: Vec<(String, T)>,
    choice: Cell<UrlChoice>,
    /// Where the current URL's position is published (`domesday_push_url_index`).
    stats: Option<Arc<PushStats>>,
}

impl<T> Failover<T> {
    /// `targets`: (URL as logged, transport), in the configured order; at least one.
    pub(crate) fn new(targets: Vec<(String, T)>) -> Self {
        let choice = Cell::new(UrlChoice::new(targets.len()));
        Failover { targets, choice, stats: None }
    }

    /// Publishes the current URL's position in `stats` from now on.
    pub(crate) fn with_stats(mut self, stats: Arc<PushStats>) -> Self {
        stats.url_index.store(self.choice.get().current() as u64, Ordering::Relaxed);
        self.stats = Some(stats);
        self
    }
}

impl Failover<HttpTransport> {
    /// One HTTP client per URL, each with the same token, timeout and pool.
    pub(crate) fn http(
        urls: &[String],
        token: &crate::config::Secret,
        tls: &crate::config::PushTls,
        timeout: Duration,
        pool: usize,
    ) -> Result<Self, super::PushError> {
        let targets = urls
            .iter()
            .map(|u| Ok((u.clone(), HttpTransport::new(u, token, tls, timeout, pool)?)))
            .collect::<Result<Vec<_>, super::PushError>>()?;
        if targets.is_empty() {
            return Err(super::PushError::Url("no push URL".into()));
        }
        Ok(Failover::new(targets))
    }
}

impl<T: Transport> Transport for Failover<T> {
    async fn send(&self, body: &[u8], timeout: Duration) -> Outcome {
        let mut choice = self.choice.get();
        let start = choice.current();
        let mut whys = Vec::new();
        let mut retry_after = None;
        // When every collector fails, the request counts once, under the last one's reason.
        let mut reason = PushFailure::Connect;
        for i in choice.order() {
            let Some((url, target)) = self.targets.get(i) else { continue };
            match target.send(body, timeout).await {
                Outcome::Retry { why, reason: r, retry_after: ra } => {
                    reason = r;
                    if self.targets.len() > 1 {
                        tracing::debug!(url, why, "push: no answer from this collector");
                    }
                    whys.push(if self.targets.len() > 1 { format!("{url}: {why}") } else { why });
                    retry_after = retry_after.max(ra);
                }
                answer => {
                    if i != start {
                        let from = self.targets.get(start).map(|t| t.0.as_str()).unwrap_or("");
                        tracing::warn!(from, to = url, "push: failed over to the next collector of push.url");
                    }
                    choice.answered(i);
                    self.choice.set(choice);
                    if let Some(s) = &self.stats {
                        s.url_index.store(i as u64, Ordering::Relaxed);
                    }
                    return answer;
                }
            }
        }
        Outcome::Retry { why: whys.join("; "), reason, retry_after }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_order_starts_at_the_current_url_and_wraps_round() {
        let mut c = UrlChoice::new(3);
        assert_eq!(c.order().collect::<Vec<_>>(), [0, 1, 2]);
        c.answered(1);
        assert_eq!(c.order().collect::<Vec<_>>(), [1, 2, 0]);
        c.answered(7); // out of range: ignored
        assert_eq!(c.current(), 1);
        assert_eq!(UrlChoice::new(1).order().collect::<Vec<_>>(), [0]);
        assert_eq!(UrlChoice::new(0).order().collect::<Vec<_>>(), [0], "never an empty order");
    }

    proptest! {
        /// Whatever the current URL and the set of collectors up, one request
        /// tries each URL once, and lands on the first collector up at or after
        /// the current one; with none up, the current URL stays.
        #[test]
        fn a_request_lands_on_the_first_collector_up_from_the_current_one(
            n in 1usize..6, start in 0usize..6, up in proptest::collection::vec(any::<bool>(), 6),
        ) {
            let mut c = UrlChoice::new(n);
            c.answered(start % n);
            let order: Vec<usize> = c.order().collect();
            let mut sorted = order.clone();
            sorted.sort();
            prop_assert_eq!(sorted, (0..n).collect::<Vec<_>>());
            let landed = order.iter().copied().find(|&i| up[i]);
            if let Some(i) = landed {
                c.answered(i);
            }
            let want = (0..n).map(|k| (start % n + k) % n).find(|&i| up[i]).unwrap_or(start % n);
            prop_assert_eq!(c.current(), want);
        }
    }

    /// A scripted collector: the outcome it gives and the requests it saw.
    struct Fake {
        outcome: RefCell<Outcome>,
        seen: RefCell<u32>,
    }

    impl Transport for Rc<Fake> {
        async fn send(&self, _body: &[u8], _timeout: Duration) -> Outcome {
            *self.seen.borrow_mut() += 1;
            self.outcome.borrow().clone()
        }
    }

    fn fake(o: Outcome) -> Rc<Fake> {
        Rc::new(Fake { outcome: RefCell::new(o), seen: RefCell::new(0) })
    }

    fn down() -> Outcome {
        Outcome::Retry { why: "connection refused".into(), reason: PushFailure::Connect, retry_after: None }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
    }

    #[test]
    fn fails_over_on_no_answer_or_5xx_sticks_and_never_on_a_refusal() {
        let (a, b) = (fake(Outcome::Sent), fake(Outcome::Sent));
        let stats = Arc::new(PushStats::default());
        let f = Failover::new(vec![("a".into(), a.clone()), ("b".into(), b.clone())]).with_stats(stats.clone());
        let index = || stats.url_index.load(Ordering::Relaxed);
        let t = Duration::from_secs(1);
        block_on(async {
            assert_eq!(f.send(b"x", t).await, Outcome::Sent);
            assert_eq!((*a.seen.borrow(), *b.seen.borrow()), (1, 0), "the first URL first");
            // a goes down: the same request goes to b at once.
            *a.outcome.borrow_mut() = down();
            assert_eq!(f.send(b"x", t).await, Outcome::Sent);
            assert_eq!((*a.seen.borrow(), *b.seen.borrow()), (2, 1));
            assert_eq!(index(), 1, "domesday_push_url_index follows");
            // a is back, but the agent stays on b (sticky).
            *a.outcome.borrow_mut() = Outcome::Sent;
            assert_eq!(f.send(b"x", t).await, Outcome::Sent);
            assert_eq!((*a.seen.borrow(), *b.seen.borrow()), (2, 2));
            // b answers 503: back to a, which then stays current.
            *b.outcome.borrow_mut() =
                Outcome::Retry { why: "HTTP 503: busy".into(), reason: PushFailure::Http, retry_after: None };
            assert_eq!(f.send(b"x", t).await, Outcome::Sent);
            assert_eq!(f.send(b"x", t).await, Outcome::Sent);
            assert_eq!((*a.seen.borrow(), *b.seen.borrow()), (4, 3));
            assert_eq!(index(), 0);
            // A refusal (400) is a verdict on the payload: not sent elsewhere.
            let refused = Outcome::Reject { status: 400, body: "bad".into() };
            *a.outcome.borrow_mut() = refused.clone();
            *b.outcome.borrow_mut() = Outcome::Sent;
            assert_eq!(f.send(b"x", t).await, refused);
            assert_eq!((*a.seen.borrow(), *b.seen.borrow()), (5, 3));
            // Both away: a retry for the pusher (which spools), naming both, the
            // longest Retry-After kept; the current URL does not move.
            *a.outcome.borrow_mut() =
                Outcome::Retry { why: "HTTP 429".into(), reason: PushFailure::Http, retry_after: Some(t) };
            *b.outcome.borrow_mut() = down();
            match f.send(b"x", t).await {
                Outcome::Retry { why, retry_after, .. } => {
                    assert!(why.contains("a: HTTP 429") && why.contains("b: connection refused"), "{why}");
                    assert_eq!(retry_after, Some(t));
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(f.choice.get().current(), 0);
            assert_eq!(index(), 0);
        });
    }
}
