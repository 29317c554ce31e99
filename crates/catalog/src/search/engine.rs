//! How a search runs over the index: the text's words are matched by tantivy (term
//! dictionaries, postings, BM25), while filters, facets, sorting and paging run over plain
//! per-segment tables read once from the fast fields.
//!
//! A search not seen before used to cost one to two milliseconds, most of it spent again and
//! again on the same work: walking the typo and prefix automata through the term dictionaries,
//! merging the postings of every field, and reading fast columns doc by doc for the facets. Here:
//! - each word's matches (document and score, for the whole word: every field, exact, typo and
//!   prefix alternatives) are computed once per index generation and kept in [`WordCache`], so a
//!   search whose words were seen since the last index change only intersects sorted lists;
//! - each segment's filter, facet and sort values sit in a [`SegmentTable`] (plain vectors, built
//!   once per segment, which never changes), so filtering, counting and ranking a match costs a
//!   few array reads.
//!
//! Scores are tantivy's own: a word's score is its query's score, and a search's score is the
//! sum over its words (as tantivy's boolean query sums its required clauses), plus the SKU match.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tantivy::columnar::StrColumn;
use tantivy::index::SegmentId;
use tantivy::query::{EnableScoring, Query};
use tantivy::schema::Field;
use tantivy::{DocAddress, DocId, Score, Searcher, SegmentReader};

use super::{Facets, Filters, PriceBucket, Sort, F_BRAND_FACET, F_CATEGORY_IDS, F_CREATED_AT, F_PRICE_MIN};
use super::{F_RATING, F_RATING_COUNT, PRICE_BUCKETS};

/// What the word cache may hold, in bytes of matches (each match is 8 bytes).
const WORD_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// Category ordinals a [`Row`] holds itself; a document in more categories (a deeper tree)
/// keeps them in [`SegmentTable::spilled`].
const INLINE_CATEGORIES: usize = 7;

/// One document's values for filters, facets and sorts, in one cache line: a search touches
/// every matching document, and reading them from a column each cost a cache miss per column.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Row {
    price: i64,
    created_at: i64,
    rating: i32,
    rating_count: u32,
    /// Ordinal of the brand's display spelling in `brand_names`; `NONE` without a brand.
    brand: u32,
    categories: [u32; INLINE_CATEGORIES],
    /// `u8::MAX`: more than `INLINE_CATEGORIES`, see `spilled`.
    category_count: u8,
    in_stock: bool,
    /// Index in `PRICE_BUCKETS` (`u8::MAX`: in none).
    price_bucket: u8,
    /// Whole stars of the average rating, 0..=4 (a 5.00 counts as 4: "4 and up").
    stars: u8,
}

/// One segment's values for filters, facets and sorts, by document id.
pub(super) struct SegmentTable {
    rows: Vec<Row>,
    /// Category ordinals of documents in more than `INLINE_CATEGORIES` categories.
    spilled: HashMap<DocId, Vec<u32>>,
    brand_names: Vec<String>,
    category_ids: Vec<String>,
    /// The product id of doc `d` is `id_text[id_end[id[d] - 1]..id_end[id[d]]]` (`NONE`: none).
    id: Vec<u32>,
    id_text: String,
    id_end: Vec<u32>,
    /// Per typo-tolerant field, the terms a word without digits can be a typo of (at most
    /// `MAX_TYPO_DIGITS` digits: SKU and model numbers are looked up exactly).
    vocabulary: Vec<(Field, Vec<Box<[char]>>)>,
}

/// A term with more digits than the largest edit distance is never a typo of a word without
/// digits (and words with digits are matched exactly).
const MAX_TYPO_DIGITS: usize = 2;

/// Whether `a` can be made `b` with at most `max` edits: inserting, deleting or replacing a
/// character, or swapping two neighbours (the distance tantivy's fuzzy query uses, with a swap
/// costing one). Words here are at most 40 characters and terms 64 bytes.
pub(super) fn within_edits(a: &[char], b: &[char], max: usize) -> bool {
    const CAP: usize = 72;
    if a.len().abs_diff(b.len()) > max || b.len() >= CAP {
        return false;
    }
    let n = b.len();
    let (mut before, mut previous, mut current) = ([0usize; CAP], [0usize; CAP], [0usize; CAP]);
    for (j, cell) in previous.iter_mut().enumerate().take(n + 1) {
        *cell = j;
    }
    for i in 1..=a.len() {
        current[0] = i;
        let mut best = i;
        for j in 1..=n {
            let replace = previous[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            let mut cost = replace.min(previous[j] + 1).min(current[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cost = cost.min(before[j - 2] + 1);
            }
            current[j] = cost;
            best = best.min(cost);
        }
        if best > max {
            return false;
        }
        before = previous;
        previous = current;
    }
    previous[n] <= max
}

const NONE: u32 = u32::MAX;

/// Every term of a string column, by ordinal: one pass over the dictionary (looking terms up one
/// by one would decompress a block each time).
fn terms(column: &Option<StrColumn>) -> tantivy::Result<Vec<String>> {
    let mut names = Vec::new();
    if let Some(column) = column {
        let mut stream = column.dictionary().stream()?;
        while stream.advance() {
            names.push(String::from_utf8_lossy(stream.key()).into_owned());
        }
    }
    Ok(names)
}

/// The first ordinal of each document in a string column (`NONE` when it has none).
fn first_ords(column: &Option<StrColumn>, max_doc: DocId) -> Vec<u32> {
    (0..max_doc)
        .map(|doc| {
            column
                .as_ref()
                .and_then(|c| c.term_ords(doc).next())
                .map_or(NONE, |ord| ord as u32)
        })
        .collect()
}

impl SegmentTable {
    fn read(reader: &SegmentReader, typo_fields: &[Field]) -> tantivy::Result<Self> {
        let mut vocabulary = Vec::with_capacity(typo_fields.len());
        for &field in typo_fields {
            let mut terms = Vec::new();
            let inverted = reader.inverted_index(field)?;
            let mut stream = inverted.terms().stream()?;
            while stream.advance() {
                let term = String::from_utf8_lossy(stream.key());
                if term.chars().filter(char::is_ascii_digit).count() <= MAX_TYPO_DIGITS {
                    terms.push(term.chars().collect());
                }
            }
            vocabulary.push((field, terms));
        }
        let fast = reader.fast_fields();
        let max_doc = reader.max_doc();
        let price = fast.i64(F_PRICE_MIN)?;
        let created_at = fast.i64(F_CREATED_AT)?;
        let rating = fast.i64(F_RATING)?;
        let rating_count = fast.i64(F_RATING_COUNT)?;
        let stock = fast.bool("in_stock")?;
        let brands = fast.str(F_BRAND_FACET)?;
        let categories = fast.str(F_CATEGORY_IDS)?;
        let brand = first_ords(&brands, max_doc);
        let mut rows = Vec::with_capacity(max_doc as usize);
        let mut spilled = HashMap::new();
        for doc in 0..max_doc {
            let ords: Vec<u32> = categories
                .as_ref()
                .map(|c| c.term_ords(doc).map(|ord| ord as u32).collect())
                .unwrap_or_default();
            let mut inline = [NONE; INLINE_CATEGORIES];
            let category_count = if ords.len() <= INLINE_CATEGORIES {
                inline[..ords.len()].copy_from_slice(&ords);
                ords.len() as u8
            } else {
                spilled.insert(doc, ords);
                u8::MAX
            };
            let price = price.first(doc).unwrap_or(0);
            let rating = rating.first(doc).unwrap_or(0).clamp(0, i64::from(i32::MAX));
            rows.push(Row {
                price,
                created_at: created_at.first(doc).unwrap_or(0),
                rating: rating as i32,
                rating_count: rating_count.first(doc).unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
                brand: brand[doc as usize],
                categories: inline,
                category_count,
                in_stock: stock.first(doc).unwrap_or(false),
                price_bucket: PRICE_BUCKETS
                    .iter()
                    .position(|&(from, to)| price >= from && to.is_none_or(|to| price < to))
                    .map_or(u8::MAX, |i| i as u8),
                stars: (rating / 100).clamp(0, 4) as u8,
            });
        }
        let ids = fast.str("id")?;
        let mut id_text = String::new();
        let mut id_end = Vec::new();
        for id in terms(&ids)? {
            id_text.push_str(&id);
            id_end.push(id_text.len() as u32);
        }
        Ok(Self {
            rows,
            spilled,
            brand_names: terms(&brands)?,
            category_ids: terms(&categories)?,
            id: first_ords(&ids, max_doc),
            id_text,
            id_end,
            vocabulary,
        })
    }

    /// Adds to `found` the terms of `field` within `distance` edits of `word` (which has no digits).
    pub(super) fn typos_of(&self, field: Field, word: &[char], distance: u8, found: &mut Vec<String>) {
        let Some((_, terms)) = self.vocabulary.iter().find(|(f, _)| *f == field) else {
            return;
        };
        for term in terms {
            if within_edits(word, term, usize::from(distance)) {
                found.push(term.iter().collect());
            }
        }
    }

    fn categories<'a>(&'a self, doc: DocId, row: &'a Row) -> &'a [u32] {
        match row.category_count {
            u8::MAX => self.spilled.get(&doc).map_or(&[], Vec::as_slice),
            n => &row.categories[..usize::from(n)],
        }
    }

    /// The product id of `doc`, when the id column has it.
    pub(super) fn id(&self, doc: DocId) -> Option<&str> {
        let ord = *self.id.get(doc as usize)? as usize;
        let end = *self.id_end.get(ord)? as usize;
        let start = ord.checked_sub(1).map_or(0, |before| self.id_end[before] as usize);
        self.id_text.get(start..end)
    }
}

/// The tables of the segments of the current searcher, kept while their segment is searched.
pub(super) struct Tables {
    by_segment: Mutex<HashMap<SegmentId, Arc<SegmentTable>>>,
    /// The fields whose terms a word may be a typo of.
    typo_fields: Vec<Field>,
}

impl Tables {
    pub(super) fn new(typo_fields: Vec<Field>) -> Self {
        Self {
            by_segment: Mutex::default(),
            typo_fields,
        }
    }

    /// The table of every segment of `searcher`, in segment order; builds the missing ones and
    /// forgets those of segments no longer searched.
    pub(super) fn of(&self, searcher: &Searcher) -> tantivy::Result<Vec<Arc<SegmentTable>>> {
        let readers = searcher.segment_readers();
        {
            let known = self.lock();
            let found: Vec<Arc<SegmentTable>> = readers
                .iter()
                .filter_map(|r| known.get(&r.segment_id()).cloned())
                .collect();
            if found.len() == readers.len() {
                return Ok(found);
            }
        }
        // Built outside the lock: a concurrent search may build the same table, which is waste
        // but not harm (segments never change).
        let mut built = Vec::with_capacity(readers.len());
        for reader in readers {
            let table = self.lock().get(&reader.segment_id()).cloned();
            built.push(match table {
                Some(table) => table,
                None => Arc::new(SegmentTable::read(reader, &self.typo_fields)?),
            });
        }
        let mut known = self.lock();
        known.clear();
        for (reader, table) in readers.iter().zip(&built) {
            known.insert(reader.segment_id(), Arc::clone(table));
        }
        Ok(built)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SegmentId, Arc<SegmentTable>>> {
        self.by_segment.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The documents one word matches, per segment (in segment order), sorted by document, with
/// the word's score; deleted documents left out.
pub(super) struct WordMatches {
    segments: Vec<Vec<(DocId, Score)>>,
}

impl WordMatches {
    /// Runs `query` over every segment of `searcher`, scored as tantivy scores it there.
    pub(super) fn compute(searcher: &Searcher, query: &dyn Query) -> tantivy::Result<Self> {
        let weight = query.weight(EnableScoring::enabled_from_searcher(searcher))?;
        let segments = searcher
            .segment_readers()
            .iter()
            .map(|reader| {
                let alive = reader.alive_bitset();
                let mut matches = Vec::new();
                weight.for_each(reader, &mut |doc, score| {
                    if alive.is_none_or(|a| a.is_alive(doc)) {
                        matches.push((doc, score));
                    }
                })?;
                // Scorers go through documents in order; unions sort within their window only.
                matches.sort_unstable_by_key(|&(doc, _)| doc);
                // Kept for a while: hold what it needs, not what growing it left over.
                matches.shrink_to_fit();
                Ok(matches)
            })
            .collect::<tantivy::Result<_>>()?;
        Ok(Self { segments })
    }

    fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| (s.len() * 8) as u64).sum::<u64>() + 64
    }
}

/// The key of a word's matches: the index generation, the word, whether it was cut to its
/// maximum length, and whether it is the query's last word (matched as a prefix too).
type WordKey = (u64, String, bool, bool);

/// Word matches of the current index generation. Shoppers' queries share their words, so a
/// search not seen before is mostly made of words that were.
pub(super) struct WordCache {
    cache: moka::sync::Cache<WordKey, Arc<WordMatches>>,
}

impl Default for WordCache {
    fn default() -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(WORD_CACHE_BYTES)
                .weigher(|_: &WordKey, m: &Arc<WordMatches>| m.bytes().min(u64::from(u32::MAX)) as u32)
                .build(),
        }
    }
}

impl WordCache {
    pub(super) fn get_or_compute(
        &self,
        key: WordKey,
        compute: impl FnOnce() -> tantivy::Result<WordMatches>,
    ) -> tantivy::Result<Arc<WordMatches>> {
        if let Some(found) = self.cache.get(&key) {
            return Ok(found);
        }
        let matches = Arc::new(compute()?);
        self.cache.insert(key, Arc::clone(&matches));
        Ok(matches)
    }

    /// (entries, bytes by the weigher)
    pub(super) fn size(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }

    /// Drops every word's matches (called when the index changes: they belong to the old
    /// generation and can never be asked for again).
    pub(super) fn clear(&self) {
        self.cache.invalidate_all();
    }
}

/// The filters resolved against one segment's table.
struct SegmentFilter<'a> {
    filters: &'a Filters,
    /// `Some(None)`: the category is not in this segment, nothing matches.
    category: Option<Option<u32>>,
    /// Brand ordinals accepted (empty with brand filters: nothing matches).
    brands: Option<Vec<u32>>,
}

impl<'a> SegmentFilter<'a> {
    fn new(filters: &'a Filters, table: &SegmentTable) -> Self {
        let category = filters
            .category_id
            .as_ref()
            .map(|id| table.category_ids.binary_search(id).ok().map(|ord| ord as u32));
        let wanted: Vec<String> = filters
            .brands
            .iter()
            .map(|b| b.trim().to_lowercase())
            .filter(|b| !b.is_empty())
            .collect();
        let brands = (!wanted.is_empty()).then(|| {
            table
                .brand_names
                .iter()
                .enumerate()
                .filter(|(_, name)| wanted.contains(&name.to_lowercase()))
                .map(|(ord, _)| ord as u32)
                .collect()
        });
        Self {
            filters,
            category,
            brands,
        }
    }

    /// Whether no document of the segment can pass.
    fn rejects_all(&self) -> bool {
        matches!(self.category, Some(None)) || self.brands.as_ref().is_some_and(Vec::is_empty)
    }

    fn accepts(&self, table: &SegmentTable, doc: DocId, row: &Row) -> bool {
        let f = self.filters;
        if let Some(Some(category)) = self.category {
            if !table.categories(doc, row).contains(&category) {
                return false;
            }
        }
        if let Some(brands) = &self.brands {
            if !brands.contains(&row.brand) {
                return false;
            }
        }
        f.price_min.is_none_or(|min| row.price >= min)
            && f.price_max.is_none_or(|max| row.price <= max)
            && f.min_rating_x100.is_none_or(|min| i64::from(row.rating) >= min)
            && f.in_stock.is_none_or(|wanted| row.in_stock == wanted)
    }
}

/// Facet counts of one segment, by the segment's ordinals.
struct SegmentCounts {
    categories: Vec<u64>,
    brands: Vec<u64>,
    prices: [u64; PRICE_BUCKETS.len()],
    /// Docs by whole stars, 0..=4.
    stars: [u64; 5],
}

impl SegmentCounts {
    fn new(table: &SegmentTable) -> Self {
        Self {
            categories: vec![0; table.category_ids.len()],
            brands: vec![0; table.brand_names.len()],
            prices: [0; PRICE_BUCKETS.len()],
            stars: [0; 5],
        }
    }

    fn add(&mut self, table: &SegmentTable, doc: DocId, row: &Row) {
        for &ord in table.categories(doc, row) {
            self.categories[ord as usize] += 1;
        }
        if let Some(n) = self.brands.get_mut(row.brand as usize) {
            *n += 1;
        }
        if let Some(n) = self.prices.get_mut(usize::from(row.price_bucket)) {
            *n += 1;
        }
        self.stars[usize::from(row.stars)] += 1;
    }

    /// Docs rated at least 4, 3, 2 and 1 stars, in that order.
    fn ratings(&self) -> [u64; 4] {
        let at_least = |stars: usize| self.stars[stars..].iter().sum();
        [at_least(4), at_least(3), at_least(2), at_least(1)]
    }
}

/// Merges the segments' counts into facets, resolving ordinals to ids and brand names.
fn merge_facets(segments: Vec<(Arc<SegmentTable>, SegmentCounts)>) -> Facets {
    let mut categories: HashMap<String, u64> = HashMap::new();
    // Brands are grouped case-insensitively (as the brand filter is); the most common spelling
    // is displayed.
    let mut brands: HashMap<String, HashMap<String, u64>> = HashMap::new();
    let mut prices = [0u64; PRICE_BUCKETS.len()];
    let mut ratings = [0u64; 4];
    for (table, counts) in segments {
        for (ord, &n) in counts.categories.iter().enumerate().filter(|(_, &n)| n > 0) {
            *categories.entry(table.category_ids[ord].clone()).or_default() += n;
        }
        for (ord, &n) in counts.brands.iter().enumerate().filter(|(_, &n)| n > 0) {
            let name = &table.brand_names[ord];
            *brands
                .entry(name.to_lowercase())
                .or_default()
                .entry(name.clone())
                .or_default() += n;
        }
        prices.iter_mut().zip(counts.prices).for_each(|(a, b)| *a += b);
        ratings.iter_mut().zip(counts.ratings()).for_each(|(a, b)| *a += b);
    }
    let mut categories: Vec<(String, u64)> = categories.into_iter().collect();
    categories.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut brands: Vec<(String, u64)> = brands
        .into_values()
        .filter_map(|spellings| {
            let total = spellings.values().sum();
            let most_common = spellings
                .into_iter()
                .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)));
            Some((most_common?.0, total))
        })
        .collect();
    brands.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Facets {
        categories,
        brands,
        prices: PRICE_BUCKETS
            .iter()
            .zip(prices)
            .map(|(&(from, to), count)| PriceBucket { from, to, count })
            .collect(),
        ratings: [4, 3, 2, 1].into_iter().zip(ratings).collect(),
    }
}

/// The documents of one segment that match every word, with the sum of their scores, plus
/// those the SKU matched (its score added). Both inputs are sorted by document.
fn text_matches(words: &[&[(DocId, Score)]], sku: &[(DocId, Score)]) -> Vec<(DocId, Score)> {
    let mut all_words = Vec::new();
    if let Some((shortest, others)) = shortest_first(words) {
        let mut cursors = vec![0usize; others.len()];
        'docs: for &(doc, score) in shortest {
            let mut total = score;
            for (list, cursor) in others.iter().zip(cursors.iter_mut()) {
                // Galloping: lists can be far longer than the shortest one.
                *cursor += gallop(&list[*cursor..], doc);
                match list.get(*cursor) {
                    Some(&(found, s)) if found == doc => total += s,
                    Some(_) => continue 'docs,
                    None => break 'docs,
                }
            }
            all_words.push((doc, total));
        }
    }
    if sku.is_empty() {
        return all_words;
    }
    // Union with the SKU's matches, adding scores where both match.
    let mut merged = Vec::with_capacity(all_words.len() + sku.len());
    let (mut a, mut b) = (all_words.into_iter().peekable(), sku.iter().copied().peekable());
    loop {
        match (a.peek().copied(), b.peek().copied()) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                merged.push((x.0, x.1 + y.1));
                a.next();
                b.next();
            }
            (Some(x), Some(y)) if x.0 < y.0 => merged.extend(a.next()),
            (Some(_), Some(_)) | (None, Some(_)) => merged.extend(b.next()),
            (Some(_), None) => merged.extend(a.next()),
            (None, None) => return merged,
        }
    }
}

/// A segment's matching documents with their scores, sorted by document.
pub(super) type Matches = Vec<(DocId, Score)>;
type MatchSlice<'a> = &'a [(DocId, Score)];

fn shortest_first<'a>(words: &[MatchSlice<'a>]) -> Option<(MatchSlice<'a>, Vec<MatchSlice<'a>>)> {
    let (at, _) = words.iter().enumerate().min_by_key(|(_, w)| w.len())?;
    let others = words
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != at)
        .map(|(_, w)| *w)
        .collect();
    Some((words[at], others))
}

/// The number of leading entries of `list` whose document is below `doc`.
fn gallop(list: &[(DocId, Score)], doc: DocId) -> usize {
    // Entries before `bound / 2` are below `doc`; double until one at `bound - 1` is not.
    let mut bound = 1;
    while bound <= list.len() && list[bound - 1].0 < doc {
        bound *= 2;
    }
    let start = bound / 2;
    let end = bound.min(list.len());
    start + list[start..end].partition_point(|&(d, _)| d < doc)
}

/// A candidate hit: its sort key and address. The smaller comes first: higher score, then
/// smaller keys, then smaller address.
#[derive(Clone, Copy)]
struct Ranked {
    score: Score,
    primary: i64,
    secondary: i64,
    address: DocAddress,
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then(self.primary.cmp(&other.primary))
            .then(self.secondary.cmp(&other.secondary))
            .then(self.address.cmp(&other.address))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Ranked {}

/// The first `keep` candidates seen so far, in a heap whose top is the last of them.
struct TopN {
    keep: usize,
    heap: std::collections::BinaryHeap<Ranked>,
}

impl TopN {
    fn new(keep: usize) -> Self {
        Self {
            keep,
            heap: std::collections::BinaryHeap::new(),
        }
    }

    fn offer(&mut self, candidate: Ranked) {
        if self.heap.len() < self.keep {
            self.heap.push(candidate);
        } else if let Some(mut last) = self.heap.peek_mut() {
            if candidate < *last {
                *last = candidate;
            }
        }
    }

    /// The kept candidates, first first.
    fn into_sorted(self) -> Vec<Ranked> {
        self.heap.into_sorted_vec()
    }
}

/// What a search asks of the execution, the text already matched.
pub(super) struct Plan<'a> {
    pub filters: &'a Filters,
    /// Per segment, the text's matches; `None` without text (every live document).
    pub text: Option<Vec<Vec<(DocId, Score)>>>,
    pub sort: Sort,
    pub offset: usize,
    pub limit: usize,
    pub with_facets: bool,
}

/// The answer before the ids are read: total, the window's (score, address), facets.
pub(super) struct Outcome {
    pub total: usize,
    pub window: Vec<(Score, DocAddress)>,
    pub facets: Option<Facets>,
}

/// Filters, counts, ranks and pages the matches of `plan` over the segments' tables.
pub(super) fn execute(searcher: &Searcher, tables: &[Arc<SegmentTable>], plan: Plan<'_>) -> Outcome {
    let relevance = plan.sort == Sort::Relevance && plan.text.is_some();
    let mut total = 0usize;
    let keep = if plan.limit == 0 {
        0
    } else {
        plan.offset.saturating_add(plan.limit)
    };
    let mut top = TopN::new(keep);
    let mut counts = Vec::new();
    for (ord, (reader, table)) in searcher.segment_readers().iter().zip(tables).enumerate() {
        let filter = SegmentFilter::new(plan.filters, table);
        if filter.rejects_all() {
            continue;
        }
        let mut facet = plan.with_facets.then(|| SegmentCounts::new(table));
        let mut take = |doc: DocId, score: Score| {
            let Some(row) = table.rows.get(doc as usize) else {
                return;
            };
            if !filter.accepts(table, doc, row) {
                return;
            }
            total += 1;
            if let Some(facet) = facet.as_mut() {
                facet.add(table, doc, row);
            }
            if keep > 0 {
                let (primary, secondary) = match plan.sort {
                    _ if relevance => (0, 0),
                    Sort::Rating => (-i64::from(row.rating), -i64::from(row.rating_count)),
                    Sort::PriceAsc => (row.price, 0),
                    Sort::PriceDesc => (row.price.saturating_neg(), 0),
                    _ => (row.created_at.saturating_neg(), 0),
                };
                top.offer(Ranked {
                    score: if relevance { score } else { 0.0 },
                    primary,
                    secondary,
                    address: DocAddress::new(ord as u32, doc),
                });
            }
        };
        match &plan.text {
            Some(text) => text[ord].iter().for_each(|&(doc, score)| take(doc, score)),
            None => {
                let alive = reader.alive_bitset();
                (0..reader.max_doc())
                    .filter(|&doc| alive.is_none_or(|a| a.is_alive(doc)))
                    .for_each(|doc| take(doc, 0.0));
            }
        }
        if let Some(facet) = facet {
            counts.push((Arc::clone(table), facet));
        }
    }
    let window = top
        .into_sorted()
        .into_iter()
        .skip(plan.offset)
        .map(|r| (r.score, r.address))
        .collect();
    Outcome {
        total,
        window,
        facets: plan.with_facets.then(|| merge_facets(counts)),
    }
}

/// The per-segment text matches of `words` (every one required) and the SKU's matches.
pub(super) fn combine(segments: usize, words: &[Arc<WordMatches>], sku: Option<&WordMatches>) -> Vec<Matches> {
    (0..segments)
        .map(|s| {
            // A word matching nowhere in this segment leaves the intersection empty.
            let lists: Vec<MatchSlice<'_>> = words.iter().map(|w| w.segments[s].as_slice()).collect();
            let sku = sku.map_or(&[][..], |m| m.segments[s].as_slice());
            text_matches(&lists, sku)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The distance agrees with the Levenshtein automaton tantivy's fuzzy query is built from.
    #[test]
    fn within_edits_agrees_with_the_levenshtein_automaton() {
        let words = ["headphones", "shirt", "wireless", "cafe", "kettle", "ab", "steel"];
        let terms = [
            "headphones",
            "headphnes",
            "haedphones",
            "headphonesx",
            "headphone",
            "hedphnes",
            "shirt",
            "short",
            "shrit",
            "shirts",
            "sihrt",
            "wirless",
            "wrieless",
            "wirelxxs",
            "wirexxs",
            "cafe",
            "acfe",
            "caffe",
            "kettel",
            "ketle",
            "kettle",
            "ba",
            "a",
            "",
            "steal",
            "stele",
            "teesl",
            "steeel",
        ];
        for distance in 0..=2u8 {
            let builder = levenshtein_automata::LevenshteinAutomatonBuilder::new(distance, true);
            for word in words {
                let dfa = builder.build_dfa(word);
                let chars: Vec<char> = word.chars().collect();
                for term in terms {
                    let mut state = dfa.initial_state();
                    for &byte in term.as_bytes() {
                        state = dfa.transition(state, byte);
                    }
                    let automaton = matches!(dfa.distance(state), levenshtein_automata::Distance::Exact(_));
                    let ours = within_edits(&chars, &term.chars().collect::<Vec<_>>(), usize::from(distance));
                    assert_eq!(ours, automaton, "{word} ~ {term} within {distance}");
                }
            }
        }
    }

    #[test]
    fn gallop_finds_the_first_entry_not_below() {
        let list: Vec<(DocId, Score)> = [1, 3, 5, 7, 9, 11, 13, 15, 17].iter().map(|&d| (d, 1.0)).collect();
        for target in 0..20 {
            let expected = list.iter().filter(|(d, _)| *d < target).count();
            assert_eq!(gallop(&list, target), expected, "target {target}");
        }
        assert_eq!(gallop(&[], 4), 0);
    }

    #[test]
    fn text_matches_intersect_words_and_add_the_sku() {
        let a = [(1, 1.0), (4, 1.0), (6, 1.0), (9, 1.0)];
        let b = [(0, 2.0), (4, 2.0), (9, 2.0), (12, 2.0)];
        let c = [(4, 0.5), (5, 0.5), (9, 0.5)];
        assert_eq!(text_matches(&[&a, &b, &c], &[]), [(4, 3.5), (9, 3.5)]);
        assert_eq!(
            text_matches(&[&a], &[(0, 10.0), (4, 10.0)]),
            [(0, 10.0), (1, 1.0), (4, 11.0), (6, 1.0), (9, 1.0)]
        );
        assert_eq!(text_matches(&[], &[(3, 10.0)]), [(3, 10.0)]);
        assert!(text_matches(&[&a, &[]], &[]).is_empty());
    }
}
