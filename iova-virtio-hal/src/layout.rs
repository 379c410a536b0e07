//! How a driver buffer is cut into bounced and directly mapped parts.

/// A byte range of a driver buffer, by CPU virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub va: usize,
    pub len: usize,
}

impl Span {
    pub fn end(&self) -> usize {
        self.va + self.len
    }
}

/// The parts of a buffer in IOVA order: a bounced head (the buffer's first,
/// partial granule), the whole granules mapped in place, a bounced tail (the
/// last, partial granule). A buffer inside one granule is all head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub head: Option<Span>,
    pub middle: Option<Span>,
    pub tail: Option<Span>,
}

impl Layout {
    /// Cuts `[va, va + len)` (non-empty, not wrapping) at granule `g` (a
    /// power of two).
    pub fn of(va: usize, len: usize, g: usize) -> Layout {
        let end = va + len;
        let up = (va + (g - 1)) & !(g - 1);
        let down = end & !(g - 1);
        if up > down {
            // Starts and ends inside the same granule.
            return Layout {
                head: Some(Span { va, len }),
                middle: None,
                tail: None,
            };
        }
        let part = |from: usize, to: usize| {
            (from < to).then_some(Span {
                va: from,
                len: to - from,
            })
        };
        Layout {
            head: part(va, up),
            middle: part(up, down),
            tail: part(down, end),
        }
    }

    /// The bounced parts.
    #[cfg(test)]
    pub fn bounced(&self) -> impl Iterator<Item = Span> {
        self.head.into_iter().chain(self.tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: usize = 0x1000;

    fn s(va: usize, len: usize) -> Option<Span> {
        Some(Span { va, len })
    }

    #[test]
    fn aligned_buffer_is_mapped_in_place() {
        let l = Layout::of(0x4000, 0x3000, G);
        assert_eq!(
            l,
            Layout {
                head: None,
                middle: s(0x4000, 0x3000),
                tail: None
            }
        );
        assert_eq!(l.bounced().count(), 0);
    }

    #[test]
    fn small_buffer_inside_one_granule_is_one_bounce() {
        for (va, len) in [
            (0x4010, 0x10),
            (0x4000, 0x10),
            (0x4ff0, 0x10),
            (0x4001, 0xfff),
        ] {
            let l = Layout::of(va, len, G);
            assert_eq!(l.middle, None, "{va:#x}+{len:#x}");
            assert_eq!(
                l.bounced().collect::<Vec<_>>(),
                [Span { va, len }],
                "{va:#x}+{len:#x}"
            );
        }
    }

    #[test]
    fn partial_ends_are_bounced_and_whole_granules_kept() {
        let l = Layout::of(0x4010, 0x3000, G);
        assert_eq!(l.head, s(0x4010, 0xff0));
        assert_eq!(l.middle, s(0x5000, 0x2000));
        assert_eq!(l.tail, s(0x7000, 0x10));
        // Straddling a boundary with no whole granule: head and tail, no middle.
        let l = Layout::of(0x4ff0, 0x20, G);
        assert_eq!(
            l,
            Layout {
                head: s(0x4ff0, 0x10),
                middle: None,
                tail: s(0x5000, 0x10)
            }
        );
        // Aligned start, partial end.
        let l = Layout::of(0x4000, 0x1800, G);
        assert_eq!(
            l,
            Layout {
                head: None,
                middle: s(0x4000, 0x1000),
                tail: s(0x5000, 0x800)
            }
        );
    }

    #[test]
    fn parts_cover_the_buffer_exactly_at_any_granule() {
        for g in [0x1000, 0x4000, 0x10000] {
            for va in [0, 1, 0xfff, 0x1000, 0x3ff0, 0x12345] {
                for len in [1, 2, 0xfff, 0x1000, 0x1001, 0x2fff, 0x10000, 0x23456] {
                    let l = Layout::of(va, len, g);
                    let parts: Vec<Span> =
                        l.head.into_iter().chain(l.middle).chain(l.tail).collect();
                    assert_eq!(parts[0].va, va);
                    assert_eq!(parts.last().unwrap().end(), va + len);
                    for w in parts.windows(2) {
                        assert_eq!(w[0].end(), w[1].va);
                        assert_eq!(w[1].va % g, 0, "inner boundaries are granule aligned");
                    }
                    if let Some(m) = l.middle {
                        assert_eq!((m.va % g, m.len % g), (0, 0));
                    }
                    for b in l.bounced() {
                        // A bounce never spans two granules.
                        assert_eq!(b.va / g, (b.end() - 1) / g);
                        assert!(b.va % g != 0 || b.len % g != 0);
                    }
                }
            }
        }
    }
}
