//! The controllers an agent can hold its session with: the ones it was given
//! (`--controller a,b,c`) and the ones the controllers say are running (in the
//! registration answer and every desired set), so a controller added later needs no
//! agent restart. Which to try first is a pure function of what worked and what failed:
//! the address of the last session that worked, then the others in the order given,
//! then the ones that failed, longest ago first — after a controller dies its agents try
//! another at once instead of waiting on the dead one's address.

use std::sync::{Arc, Mutex, PoisonError};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControllerSet {
    configured: Vec<String>,
    learned: Vec<String>,
    /// The address of the last session (or registration) that worked.
    preferred: Option<String>,
    /// Addresses that failed since they last worked, the latest last.
    failed: Vec<String>,
}

/// `HOST:PORT` from `HOST:PORT` or `SCHEME://HOST:PORT`.
pub fn address_of(endpoint: &str) -> &str {
    endpoint.split_once("://").map_or(endpoint, |(_, rest)| rest).trim_end_matches('/')
}

impl ControllerSet {
    pub fn new(configured: &[String]) -> ControllerSet {
        let mut set = ControllerSet::default();
        for address in configured.iter().map(|a| address_of(a).to_owned()) {
            if !set.configured.contains(&address) {
                set.configured.push(address);
            }
        }
        set
    }

    /// Every known address, the configured ones first, each once.
    pub fn known(&self) -> Vec<String> {
        let mut known = self.configured.clone();
        for address in &self.learned {
            if !known.contains(address) {
                known.push(address.clone());
            }
        }
        known
    }

    /// The running controllers, as a controller listed them: they replace what was
    /// learned before (a controller gone drops out; the configured ones always stay). An
    /// empty list (a controller of an earlier build, or one that does not publish)
    /// teaches nothing.
    pub fn learn(&mut self, running: &[String]) {
        if running.is_empty() {
            return;
        }
        self.learned = running.iter().map(|a| address_of(a).to_owned()).collect();
        let known = self.known();
        self.failed.retain(|address| known.contains(address));
    }

    /// The order to try them in.
    pub fn candidates(&self) -> Vec<String> {
        let known = self.known();
        let mut order: Vec<String> = Vec::with_capacity(known.len());
        if let Some(preferred) = self.preferred.as_ref().filter(|p| known.contains(p) && !self.failed.contains(p)) {
            order.push(preferred.clone());
        }
        for address in known.iter().filter(|a| !self.failed.contains(a)) {
            if !order.contains(address) {
                order.push(address.clone());
            }
        }
        order.extend(self.failed.iter().filter(|a| known.contains(a)).cloned());
        order
    }

    pub fn worked(&mut self, address: &str) {
        self.preferred = Some(address.to_owned());
        self.failed.retain(|a| a != address);
    }

    pub fn failed(&mut self, address: &str) {
        self.failed.retain(|a| a != address);
        self.failed.push(address.to_owned());
        if self.preferred.as_deref() == Some(address) {
            self.preferred = None;
        }
    }

    /// The address of the last session that worked.
    pub fn current(&self) -> Option<&str> {
        self.preferred.as_deref()
    }
}

/// A [`ControllerSet`] shared by everything that talks to the controllers (clones share it).
#[derive(Debug, Clone, Default)]
pub struct Controllers(Arc<Mutex<ControllerSet>>);

impl Controllers {
    pub fn new(configured: &[String]) -> Controllers {
        Controllers(Arc::new(Mutex::new(ControllerSet::new(configured))))
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut ControllerSet) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(configured: &[&str]) -> ControllerSet {
        ControllerSet::new(&configured.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    fn list(addresses: &[&str]) -> Vec<String> {
        addresses.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_order_is_what_worked_then_the_rest_then_what_failed() {
        let mut controllers = set(&["http://a:7100", "b:7100", "a:7100"]);
        assert_eq!(controllers.candidates(), list(&["a:7100", "b:7100"]), "schemes dropped, each once, in the order given");
        controllers.worked("b:7100");
        assert_eq!(controllers.candidates(), list(&["b:7100", "a:7100"]));
        assert_eq!(controllers.current(), Some("b:7100"));
        controllers.failed("b:7100");
        assert_eq!(controllers.candidates(), list(&["a:7100", "b:7100"]), "the one that just failed goes last");
        assert_eq!(controllers.current(), None);
        controllers.failed("a:7100");
        assert_eq!(controllers.candidates(), list(&["b:7100", "a:7100"]), "both failed: the one that failed longest ago first");
        controllers.worked("a:7100");
        assert_eq!(controllers.candidates(), list(&["a:7100", "b:7100"]));
    }

    #[test]
    fn running_controllers_are_learned_and_replaced_and_the_configured_ones_stay() {
        let mut controllers = set(&["a:7100"]);
        controllers.learn(&list(&["a:7100", "c:7100"]));
        assert_eq!(controllers.candidates(), list(&["a:7100", "c:7100"]), "a controller added later is learned");
        controllers.failed("c:7100");
        controllers.learn(&list(&["d:7100"]));
        assert_eq!(controllers.known(), list(&["a:7100", "d:7100"]), "c is gone from the list; a was given, so it stays");
        assert_eq!(controllers.candidates(), list(&["a:7100", "d:7100"]), "c's failure is forgotten with it");
        controllers.learn(&[]);
        assert_eq!(controllers.known(), list(&["a:7100", "d:7100"]), "an empty list (an earlier controller) teaches nothing");
        controllers.worked("d:7100");
        assert_eq!(controllers.candidates(), list(&["d:7100", "a:7100"]), "a learned one that worked goes first");
    }
}
