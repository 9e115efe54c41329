//! A JSON array's elements found in its bytes as they come, block by block,
//! without a parser: the array's own punctuation is checked exactly (JSON's
//! whitespace, one comma between elements, the brackets), and each element's
//! extent is found by its brackets and strings (a bracket inside a string
//! does not count). What an element holds is not checked here: the caller
//! parses the texts it needs (`serde_json` reading a file a byte at a time
//! took 10 s for 320 MB; this takes a fraction of a second).

/// Where the splitter stands between elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Top {
    /// Before the `[`.
    Open,
    /// After the `[`: an element or the `]`.
    First,
    /// After a comma: an element.
    Next,
    /// After an element: a comma or the `]`.
    After,
    /// After the `]`: whitespace only.
    Done,
}

/// Where elements go: index, place in all the bytes, text; `false` stops.
pub type Each<'a> = dyn FnMut(usize, u64, &[u8]) -> bool + 'a;

/// The bytes are not a JSON array (or not one the splitter can follow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAnArray;

/// Splits one array; [`Split::feed`] takes the bytes in any blocks.
#[derive(Debug)]
pub struct Split {
    top: Top,
    /// Bytes of an element a block cut, kept for the next block.
    carry: Vec<u8>,
    /// Elements handed on so far.
    pub count: usize,
    /// Brackets open inside the element being found (reused).
    stack: Vec<u8>,
    /// Bytes fed so far (and skipped): where the next block starts.
    fed: u64,
}

impl Default for Split {
    fn default() -> Self {
        Split { top: Top::Open, carry: Vec::new(), count: 0, stack: Vec::new(), fed: 0 }
    }
}

fn ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl Split {
    /// Bytes before the array that are not fed (a byte-order mark): the
    /// places handed on count them.
    pub fn skipped(&mut self, n: usize) {
        self.fed += u64::try_from(n).unwrap_or(u64::MAX);
    }

    /// The next block of bytes: each complete element's text to `each`
    /// (its index, where it starts in all the bytes, and its bytes), which
    /// returns `false` to stop (then `feed` returns `Ok(false)`).
    pub fn feed(&mut self, block: &[u8], each: &mut Each<'_>) -> Result<bool, NotAnArray> {
        let base = self.fed - u64::try_from(self.carry.len()).unwrap_or(0);
        self.skipped(block.len());
        if self.carry.is_empty() {
            return self.scan(block, base, each).map(|(going, rest)| self.keep(going, &block[rest..]));
        }
        // An element cut by the last block: joined with this one, and scanned
        // again from its start (a reader that makes each block at least as
        // large as [`Split::carried`] has any element scanned a few times at most).
        let mut joined = std::mem::take(&mut self.carry);
        joined.extend_from_slice(block);
        let (going, rest) = self.scan(&joined, base, each)?;
        Ok(self.keep(going, &joined[rest..]))
    }

    /// The bytes of an element cut by the last block, kept for the next.
    pub fn carried(&self) -> usize {
        self.carry.len()
    }

    fn keep(&mut self, going: bool, rest: &[u8]) -> bool {
        self.carry.clear();
        self.carry.extend_from_slice(rest);
        going
    }

    /// The end of the bytes: the array must be closed, nothing cut.
    pub fn finish(&self) -> Result<usize, NotAnArray> {
        if self.top == Top::Done && self.carry.iter().all(|b| ws(*b)) {
            Ok(self.count)
        } else {
            Err(NotAnArray)
        }
    }

    /// Scan `b` (which starts at `base` in all the bytes): `(going, where an
    /// element cut by the end starts)`.
    fn scan(&mut self, b: &[u8], base: u64, each: &mut Each<'_>) -> Result<(bool, usize), NotAnArray> {
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if ws(c) {
                i += 1;
                continue;
            }
            match (self.top, c) {
                (Top::Open, b'[') => self.top = Top::First,
                (Top::First, b']') | (Top::After, b']') => self.top = Top::Done,
                (Top::After, b',') => self.top = Top::Next,
                (Top::First | Top::Next, _) => {
                    let Some(end) = self.element_end(b, i)? else { return Ok((true, i)) };
                    let text = b.get(i..end).ok_or(NotAnArray)?;
                    let n = self.count;
                    self.count += 1;
                    self.top = Top::After;
                    if !each(n, base + u64::try_from(i).unwrap_or(u64::MAX), text) {
                        return Ok((false, end));
                    }
                    i = end;
                    continue;
                }
                _ => return Err(NotAnArray),
            }
            i += 1;
        }
        Ok((true, b.len()))
    }

    /// The end (exclusive) of the element that starts at `start`, or `None`
    /// when the bytes end first.
    fn element_end(&mut self, b: &[u8], start: usize) -> Result<Option<usize>, NotAnArray> {
        match b[start] {
            b'"' => Ok(string_end(b, start + 1)),
            b'{' | b'[' => {
                self.stack.clear();
                let mut i = start;
                while i < b.len() {
                    match b[i] {
                        c @ (b'{' | b'[') => self.stack.push(c),
                        c @ (b'}' | b']') => {
                            let open = if c == b'}' { b'{' } else { b'[' };
                            if self.stack.pop() != Some(open) {
                                return Err(NotAnArray);
                            }
                            if self.stack.is_empty() {
                                return Ok(Some(i + 1));
                            }
                        }
                        b'"' => match string_end(b, i + 1) {
                            Some(end) => {
                                i = end;
                                continue;
                            }
                            None => return Ok(None),
                        },
                        _ => {}
                    }
                    i += 1;
                }
                Ok(None)
            }
            // A number, `true`, `false` or `null`: up to the next delimiter
            // (its spelling is the parser's to judge).
            _ => {
                let len =
                    b[start..].iter().position(|c| ws(*c) || matches!(c, b',' | b']' | b'}' | b'[' | b'{' | b'"'));
                match len {
                    // A comma or a bracket where an element must be.
                    Some(0) => Err(NotAnArray),
                    len => Ok(len.map(|n| start + n)),
                }
            }
        }
    }
}

/// The end (exclusive, past the quote) of a string whose text starts at `i`.
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let k = i + memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
        if b[k] == b'"' {
            return Some(k + 1);
        }
        i = k + 2; // The escaped character is skipped, whatever it is.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The elements of `bytes` fed in blocks of `block` bytes (refused, as
    /// the stream refuses them, where one is not UTF-8).
    fn split(bytes: &[u8], block: usize) -> Result<Vec<String>, NotAnArray> {
        let mut s = Split::default();
        let mut out = Vec::new();
        let mut utf8 = true;
        for chunk in bytes.chunks(block.max(1)) {
            s.feed(chunk, &mut |i, at, t| {
                assert_eq!(i, out.len());
                let at = usize::try_from(at).unwrap();
                assert_eq!(&bytes[at..at + t.len()], t, "the place handed on");
                out.push(String::from_utf8(t.to_vec()).unwrap_or_default());
                utf8 &= std::str::from_utf8(t).is_ok();
                true
            })?;
        }
        assert_eq!(s.finish()?, out.len());
        utf8.then_some(out).ok_or(NotAnArray)
    }

    fn parsed(bytes: &[u8]) -> Option<Vec<String>> {
        let raws: Vec<&serde_json::value::RawValue> = serde_json::from_slice(bytes).ok()?;
        Some(raws.iter().map(|r| r.get().to_string()).collect())
    }

    #[test]
    fn elements_are_found_as_the_parser_finds_them_in_any_blocks() {
        let good = [
            &b"[]"[..],
            b" [ ] \n",
            b"[1,-2.5e3 , true,false,null,\"a,]\\\"}\"]",
            b"[{\"a\":\"}]\\\\\",\"b\":[1,{\"c\":[]}]} ,\n\t{}]",
            b"[[1,[2]],\"\\u005d\"]",
        ];
        for bytes in good {
            for block in [1, 2, 3, 7, 64] {
                assert_eq!(
                    split(bytes, block).ok(),
                    parsed(bytes),
                    "{:?} in blocks of {block}",
                    String::from_utf8_lossy(bytes)
                );
            }
        }
        let bad = [
            &b""[..],
            b"{}",
            b"[1 2]",
            b"[,1]",
            b"[1,]",
            b"[1",
            b"[{\"a\":1]",
            b"[{\"a\":\"x}]",
            b"[1] x",
            b"[1]]",
            b"x[1]",
        ];
        for bytes in bad {
            for block in [1, 3, 64] {
                assert_eq!(
                    split(bytes, block),
                    Err(NotAnArray),
                    "{:?} in blocks of {block}",
                    String::from_utf8_lossy(bytes)
                );
            }
        }
    }

    #[test]
    fn a_stop_keeps_the_rest_unread() {
        let mut s = Split::default();
        let mut seen = Vec::new();
        let going = s
            .feed(b"[1,2,3]", &mut |i, _, t| {
                seen.push((i, t.to_vec()));
                i < 1
            })
            .unwrap();
        assert!(!going);
        assert_eq!(seen, vec![(0, b"1".to_vec()), (1, b"2".to_vec())]);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any array of values, however laid out and cut, splits into what
        /// the parser reads; bytes the parser refuses as an array are refused
        /// or give elements the parser would refuse.
        #[test]
        fn any_array_splits_as_the_parser_reads_it(
            values in prop::collection::vec(any_json(), 0..8),
            spaces in prop::collection::vec(prop::sample::select(vec!["", " ", "\n", "\t ", "\r\n"]), 16),
            block in 1..40usize,
        ) {
            let mut text = format!("{}[", spaces[0]);
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    text.push_str(spaces[(2 * i) % 16]);
                    text.push(',');
                }
                text.push_str(spaces[(2 * i + 1) % 16]);
                text.push_str(&v.to_string());
            }
            text.push_str(spaces[15]);
            text.push(']');
            prop_assert_eq!(split(text.as_bytes(), block).ok(), parsed(text.as_bytes()));
        }

        #[test]
        fn cut_or_damaged_bytes_never_split_into_what_the_parser_would_not_read(
            values in prop::collection::vec(any_json(), 1..6),
            at in any::<prop::sample::Index>(),
            with in prop::sample::select(vec![b'[', b']', b'{', b'}', b',', b'"', b'\\', b' ', b'x']),
            block in 1..40usize,
        ) {
            let mut bytes = serde_json::to_vec(&values).unwrap();
            let i = at.index(bytes.len());
            bytes[i] = with;
            if let Ok(elements) = split(&bytes, block) {
                // Accepted: every element the parser reads alone must make the same array.
                if elements.iter().all(|e| serde_json::from_str::<serde::de::IgnoredAny>(e).is_ok()) {
                    prop_assert_eq!(Some(elements), parsed(&bytes));
                }
            }
        }
    }

    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-z\\]\\[{}\",\\\\ é]{0,6}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z\"\\]]{1,3}", inner, 0..3)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
