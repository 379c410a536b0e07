//! The driver's record of who owns what on the device: which domain IDs a
//! [`VirtioDomain`](crate::VirtioDomain) holds, and which domain each
//! endpoint is attached to. A domain's endpoints are the ones attached to its
//! ID; dropping the domain detaches them, so no endpoint is left translating
//! through an ID that nobody owns.

/// Domain IDs the driver tracks at once: live [`VirtioDomain`](crate::VirtioDomain)s,
/// and IDs whose teardown did not complete.
pub const MAX_DOMAINS: usize = 64;
/// Endpoints the driver tracks as attached at once.
pub const MAX_ENDPOINTS: usize = 64;

/// What the driver knows about a domain ID it tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// A live `VirtioDomain` holds it.
    Live,
    /// Its domain was dropped, but the UNMAP or a DETACH of the teardown did
    /// not succeed: the device may still map into it, or endpoints may still
    /// be attached. The next `VirtioDomain::new` of it finishes the teardown
    /// first.
    Unclean,
}

/// The table. Lock order: this before the driver's queue lock.
#[derive(Debug, Default)]
pub(crate) struct Owners {
    domains: heapless::Vec<(u32, Claim), MAX_DOMAINS>,
    /// `(endpoint, domain)`.
    endpoints: heapless::Vec<(u32, u32), MAX_ENDPOINTS>,
}

impl Owners {
    pub(crate) const fn new() -> Self {
        Self {
            domains: heapless::Vec::new(),
            endpoints: heapless::Vec::new(),
        }
    }

    pub(crate) fn claim(&self, domain: u32) -> Option<Claim> {
        self.domains
            .iter()
            .find(|(d, _)| *d == domain)
            .map(|&(_, c)| c)
    }

    /// Records `domain` as `claim`; `false` (and nothing changed) if the table
    /// is full.
    pub(crate) fn set_claim(&mut self, domain: u32, claim: Claim) -> bool {
        if let Some(entry) = self.domains.iter_mut().find(|(d, _)| *d == domain) {
            entry.1 = claim;
            return true;
        }
        self.domains.push((domain, claim)).is_ok()
    }

    pub(crate) fn release(&mut self, domain: u32) {
        self.domains.retain(|&(d, _)| d != domain);
    }

    /// The domain `endpoint` is attached to.
    pub(crate) fn domain_of(&self, endpoint: u32) -> Option<u32> {
        self.endpoints
            .iter()
            .find(|(e, _)| *e == endpoint)
            .map(|&(_, d)| d)
    }

    /// Whether recording `endpoint` can succeed (it is known, or there is room).
    pub(crate) fn can_attach(&self, endpoint: u32) -> bool {
        !self.endpoints.is_full() || self.domain_of(endpoint).is_some()
    }

    /// Records `endpoint` as attached to `domain` (moved from any other);
    /// `false` (and nothing changed) if the table is full.
    pub(crate) fn attach(&mut self, endpoint: u32, domain: u32) -> bool {
        if let Some(entry) = self.endpoints.iter_mut().find(|(e, _)| *e == endpoint) {
            entry.1 = domain;
            return true;
        }
        self.endpoints.push((endpoint, domain)).is_ok()
    }

    /// Forgets `endpoint` if it is recorded in `domain`.
    pub(crate) fn detach(&mut self, endpoint: u32, domain: u32) {
        self.endpoints
            .retain(|&(e, d)| !(e == endpoint && d == domain));
    }

    /// The endpoints attached to `domain`.
    pub(crate) fn endpoints_of(&self, domain: u32) -> impl Iterator<Item = u32> + '_ {
        self.endpoints
            .iter()
            .filter(move |&&(_, d)| d == domain)
            .map(|&(e, _)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_in_one_domain_at_a_time_and_full_tables_refuse() {
        let mut o = Owners::new();
        assert!(o.attach(1, 10));
        assert!(o.attach(2, 10));
        assert!(o.attach(1, 20), "moved");
        assert_eq!(o.domain_of(1), Some(20));
        assert_eq!(o.endpoints_of(10).collect::<Vec<_>>(), [2]);
        o.detach(2, 20);
        assert_eq!(o.domain_of(2), Some(10), "not in 20: kept");
        o.detach(2, 10);
        assert_eq!(o.domain_of(2), None);
        for e in 100..100 + MAX_ENDPOINTS as u32 - 1 {
            assert!(o.attach(e, 30));
        }
        assert!(!o.can_attach(7));
        assert!(!o.attach(7, 30));
        assert!(o.can_attach(1), "a known endpoint can always move");
        assert!(o.attach(1, 30));

        for d in 0..MAX_DOMAINS as u32 {
            assert!(o.set_claim(d, Claim::Live));
        }
        assert!(!o.set_claim(999, Claim::Live));
        assert!(o.set_claim(3, Claim::Unclean), "a known ID changes claim");
        assert_eq!(o.claim(3), Some(Claim::Unclean));
        o.release(3);
        assert_eq!(o.claim(3), None);
        assert!(o.set_claim(999, Claim::Live));
    }
}
