//! Strings kept in one allocation.

/// `N` strings in one allocation: what the join keeps of an event's text
/// fields. The event's own strings are then freed as it arrives, while still
/// in the cache, and its call reads back one allocation a second later, not
/// one per field.
#[derive(Debug)]
pub(crate) struct Texts<const N: usize> {
    /// Where each string ends in `text`.
    ends: [u32; N],
    text: Box<str>,
}

impl<const N: usize> Texts<N> {
    pub fn new(fields: [&str; N]) -> Self {
        let mut text = String::with_capacity(fields.iter().map(|field| field.len()).sum());
        let mut ends = [0; N];
        for (end, field) in ends.iter_mut().zip(fields) {
            text.push_str(field);
            // An event is far smaller than 4 GiB; past it, a field reads "".
            *end = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        Self {
            ends,
            text: text.into_boxed_str(),
        }
    }

    /// Fetches the text into the cache, for the batch's read-ahead.
    pub fn prefetch(&self) {
        super::prefetch::value(&*self.text);
    }

    /// The `index`th string; "" past the last.
    pub fn get(&self, index: usize) -> &str {
        let start = index
            .checked_sub(1)
            .and_then(|before| self.ends.get(before))
            .map_or(0, |&end| end as usize);
        let end = self.ends.get(index).map_or(0, |&end| end as usize);
        self.text.get(start..end).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Each string comes back whole, whatever the lengths and characters
        /// of the others.
        #[test]
        fn each_string_comes_back_whole(fields: [String; 5]) {
            let texts = Texts::new(fields.each_ref().map(String::as_str));
            for (index, field) in fields.iter().enumerate() {
                proptest::prop_assert_eq!(texts.get(index), field.as_str());
            }
            proptest::prop_assert_eq!(texts.get(fields.len()), "");
        }
    }
}
