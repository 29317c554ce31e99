//! Full-text product search for the catalog, built on tantivy: indexing, typo-tolerant querying, filters, sorts, facets and autocomplete.
//!
//! The index holds one document per active product. Queries are always built programmatically
//! (user text never reaches tantivy's query parser), every query word must match somewhere, and
//! the commit payload records a schema version and the change sequence number so a restarted
//! process knows how far the index has caught up.

mod engine;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};
use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;
use tantivy::query::{
    BooleanQuery, BoostQuery, ConstScoreQuery, DisjunctionMaxQuery, FuzzyTermQuery, Occur, Query, TermQuery,
    TermSetQuery,
};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TantivyDocument, TextFieldIndexing, TextOptions, Value, FAST, INDEXED, STORED,
    STRING,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer, TokenStream,
};
use tantivy::{DocAddress, DocId, Index, IndexReader, IndexWriter, ReloadPolicy, Score, Searcher, SegmentReader, Term};

/// Bump this whenever the schema or the analysis changes; an index with another version is rebuilt.
pub const SCHEMA_VERSION: u32 = 2;

/// The fixed price buckets reported in facets, as `[from, to)` in minor units.
pub const PRICE_BUCKETS: &[(i64, Option<i64>)] = &[
    (0, Some(1_000)),
    (1_000, Some(2_500)),
    (2_500, Some(5_000)),
    (5_000, Some(10_000)),
    (10_000, Some(25_000)),
    (25_000, None),
];

const TOKENIZER: &str = "mercato_text";
const WRITER_MEMORY_BYTES: usize = 50_000_000;
/// Only this many bytes of the user's text are looked at.
const MAX_QUERY_BYTES: usize = 1_024;
/// Only this many words of the user's text are used.
const MAX_WORDS: usize = 8;
/// Longer words are cut to this many characters and matched as a prefix.
const MAX_WORD_CHARS: usize = 40;
/// Indexed tokens longer than this many bytes are dropped (they are noise, not words).
const MAX_INDEXED_TOKEN_BYTES: usize = 64;
/// The last word is matched as a prefix only from this many characters on.
const MIN_PREFIX_CHARS: usize = 3;
/// The lowest field boost; descriptions match exact words and prefixes only.
const DESCRIPTION_BOOST: Score = 1.0;
/// An exact word match in a field scores the field boost times this, whatever the field's length.
const EXACT_WEIGHT: Score = 10.0;
/// BM25 adds this fraction of the field boost per unit of score, to order matches in one field.
const BM25_WEIGHT: Score = 0.1;
/// Matches in fields other than the best one add this fraction of their score.
const FIELD_TIE_BREAKER: Score = 0.1;
/// A fuzzy match scores this fraction of an exact one (a constant, as fuzzy scores are constant).
const FUZZY_FACTOR: Score = 0.25;
/// A prefix match scores this fraction of an exact one.
const PREFIX_FACTOR: Score = 0.5;
/// Boost of a query that equals a whole SKU code.
const SKU_EXACT_BOOST: Score = 10.0;
const MAX_SUGGEST: usize = 50;

/// One product as the index sees it. Only active (publicly visible) products are indexed.
#[derive(Debug, Clone)]
pub struct SearchDoc {
    /// Product UUID as text; the unique key.
    pub id: String,
    pub name: String,
    /// Display form, e.g. "Acme Audio".
    pub brand: String,
    /// Names on the category path, root first, e.g. `["Electronics", "Audio", "Headphones"]`.
    pub category_names: Vec<String>,
    /// Ids of the same path, root first (the product's own category last).
    pub category_ids: Vec<String>,
    pub description: String,
    /// Variant SKU codes; an exact SKU query finds the product.
    pub skus: Vec<String>,
    /// Lowest variant price in minor units (>= 0).
    pub price_min: i64,
    pub price_max: i64,
    /// Average rating * 100 (0 when unrated), 0..=500.
    pub rating_x100: i64,
    pub rating_count: i64,
    pub in_stock: bool,
    /// Creation time in unix milliseconds.
    pub created_at: i64,
}

/// The order of search results: the list's orders (relevance = best match first, or newest
/// first without text).
pub use crate::domain::SortOrder as Sort;

/// Restrictions combined (AND) with the text query.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// Products in this category or any descendant.
    pub category_id: Option<String>,
    /// Case-insensitive exact brand names; any of them (empty = no filter).
    pub brands: Vec<String>,
    /// `doc.price_min >= this`.
    pub price_min: Option<i64>,
    /// `doc.price_min <= this`.
    pub price_max: Option<i64>,
    /// `doc.rating_x100 >= this`.
    pub min_rating_x100: Option<i64>,
    /// `Some(true)`: only in stock; `Some(false)`: only out of stock.
    pub in_stock: Option<bool>,
}

/// A search request.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    /// Free text; may be empty (then every doc matching the filters).
    pub text: String,
    pub filters: Filters,
    /// Relevance with empty text means newest first.
    pub sort: Sort,
    pub offset: usize,
    /// The caller caps it (<= 100).
    pub limit: usize,
    pub with_facets: bool,
}

/// One result. `score` is the relevance score for `Sort::Relevance` with text, 0 otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: String,
    pub score: f32,
}

/// Counts over every document matching the text and the filters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facets {
    /// Category id → matching docs in it or its descendants; count desc then id.
    pub categories: Vec<(String, u64)>,
    /// Brand display name → count; count desc then name.
    pub brands: Vec<(String, u64)>,
    /// The fixed `PRICE_BUCKETS`, in order, including zero counts.
    pub prices: Vec<PriceBucket>,
    /// `(4, n)` = docs rated >= 4.00, then 3, 2, 1.
    pub ratings: Vec<(u8, u64)>,
}

/// A price bucket `[from, to)` in minor units with its count.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceBucket {
    pub from: i64,
    pub to: Option<i64>,
    pub count: u64,
}

/// The answer to a search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResult {
    /// Number of all matching docs, not just this page.
    pub total: usize,
    pub hits: Vec<Hit>,
    pub facets: Option<Facets>,
}

/// What every commit records, so that a reopened index knows its version and progress.
#[derive(Debug, Serialize, Deserialize)]
struct CommitPayload {
    schema_version: u32,
    seq: i64,
}

/// The schema's fields, resolved once.
#[derive(Debug, Clone, Copy)]
struct Fields {
    id: Field,
    name: Field,
    brand: Field,
    brand_key: Field,
    brand_facet: Field,
    category: Field,
    category_ids: Field,
    description: Field,
    sku: Field,
    sku_key: Field,
    price_min: Field,
    price_max: Field,
    rating: Field,
    rating_count: Field,
    in_stock: Field,
    created_at: Field,
}

// Fast field names, used by sorts and facets.
const F_BRAND_FACET: &str = "brand_facet";
const F_CATEGORY_IDS: &str = "category_ids";
const F_PRICE_MIN: &str = "price_min";
const F_RATING: &str = "rating_x100";
const F_RATING_COUNT: &str = "rating_count";
const F_CREATED_AT: &str = "created_at";

fn build_schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = |stored: bool| {
        let indexing = TextFieldIndexing::default()
            .set_tokenizer(TOKENIZER)
            .set_index_option(IndexRecordOption::WithFreqs);
        let opts = TextOptions::default().set_indexing_options(indexing);
        if stored {
            opts.set_stored()
        } else {
            opts
        }
    };
    let fields = Fields {
        id: b.add_text_field("id", STRING | STORED | FAST),
        name: b.add_text_field("name", text(true)),
        brand: b.add_text_field("brand", text(false)),
        brand_key: b.add_text_field("brand_key", STRING),
        brand_facet: b.add_text_field(F_BRAND_FACET, FAST),
        category: b.add_text_field("category", text(false)),
        category_ids: b.add_text_field(F_CATEGORY_IDS, STRING | FAST),
        description: b.add_text_field("description", text(false)),
        sku: b.add_text_field("sku", text(false)),
        sku_key: b.add_text_field("sku_key", STRING),
        price_min: b.add_i64_field(F_PRICE_MIN, FAST),
        price_max: b.add_i64_field("price_max", FAST),
        rating: b.add_i64_field(F_RATING, FAST),
        rating_count: b.add_i64_field(F_RATING_COUNT, FAST),
        in_stock: b.add_bool_field("in_stock", INDEXED | FAST),
        created_at: b.add_i64_field(F_CREATED_AT, FAST),
    };
    (b.build(), fields)
}

/// The analyzer for every tokenized field and for query words: split on non-alphanumerics,
/// lowercase, fold to ASCII.
fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(MAX_INDEXED_TOKEN_BYTES))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// Splits user text into analyzed words, bounded in count and length.
/// The flag is true when the word was cut and so can only be matched as a prefix.
fn query_words(text: &str) -> Vec<(String, bool)> {
    let mut end = text.len().min(MAX_QUERY_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut analyzer = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build();
    let mut stream = analyzer.token_stream(&text[..end]);
    let mut words = Vec::new();
    while words.len() < MAX_WORDS && stream.advance() {
        let token = &stream.token().text;
        let word = if token.chars().count() > MAX_WORD_CHARS {
            (token.chars().take(MAX_WORD_CHARS).collect(), true)
        } else {
            (token.clone(), false)
        };
        // A repeated word adds nothing to an AND query but cost.
        if !words.contains(&word) {
            words.push(word);
        }
    }
    words
}

/// The allowed edit distance for a query word: short words and words with digits (SKUs, model
/// numbers) must match exactly.
fn typo_distance(word: &str) -> u8 {
    if word.chars().any(|c| c.is_ascii_digit()) {
        return 0;
    }
    match word.chars().count() {
        0..=3 => 0,
        4..=7 => 1,
        _ => 2,
    }
}

fn boosted(query: Box<dyn Query>, boost: Score) -> Box<dyn Query> {
    Box::new(BoostQuery::new(query, boost))
}

/// Builds the disjunction for one word over `fields`: an exact term (BM25), a typo-tolerant
/// alternative and, when `prefix`, a prefix alternative, each weighted by the field boost.
/// The typo alternative matches the terms of the field within the word's edit distance, which
/// come from the segments' vocabularies (`tables`): comparing a word with a few hundred terms
/// costs microseconds, where building its Levenshtein automaton cost a millisecond and megabytes.
fn word_query(
    tables: &[Arc<engine::SegmentTable>],
    fields: &[(Field, Score)],
    word: &str,
    cut: bool,
    prefix: bool,
) -> Box<dyn Query> {
    let distance = typo_distance(word);
    let prefix = cut || (prefix && word.chars().count() >= MIN_PREFIX_CHARS);
    let fuzzy = distance > 0 && !cut;
    let chars: Vec<char> = word.chars().collect();
    let mut per_field: Vec<Box<dyn Query>> = Vec::new();
    for &(field, boost) in fields {
        let mut alternatives: Vec<Box<dyn Query>> = Vec::new();
        if !cut {
            // The field decides the rank (a constant per field); BM25 only orders matches
            // within the same field, so a long name cannot lose to a one-word brand.
            let term = Term::from_field_text(field, word);
            let exact = TermQuery::new(term.clone(), IndexRecordOption::WithFreqs);
            alternatives.push(Box::new(ConstScoreQuery::new(
                Box::new(TermQuery::new(term, IndexRecordOption::Basic)),
                boost * EXACT_WEIGHT,
            )));
            alternatives.push(boosted(Box::new(exact), boost * BM25_WEIGHT));
        }
        // Typos are forgiven where shoppers look (name, brand, category); long descriptions
        // would make every query several times dearer for matches nobody ranks high.
        if fuzzy && boost > DESCRIPTION_BOOST {
            let mut typos = Vec::new();
            for table in tables {
                table.typos_of(field, &chars, distance, &mut typos);
            }
            typos.sort_unstable();
            typos.dedup();
            if !typos.is_empty() {
                // Like the automaton it replaces, a constant score for any of the terms.
                let terms = typos.iter().map(|t| Term::from_field_text(field, t));
                let query = ConstScoreQuery::new(Box::new(TermSetQuery::new(terms)), 1.0);
                alternatives.push(boosted(Box::new(query), boost * EXACT_WEIGHT * FUZZY_FACTOR));
            }
        }
        if prefix {
            let starts = FuzzyTermQuery::new_prefix(Term::from_field_text(field, word), 0, true);
            alternatives.push(boosted(Box::new(starts), boost * EXACT_WEIGHT * PREFIX_FACTOR));
        }
        per_field.push(Box::new(BooleanQuery::union(alternatives)));
    }
    // The best field counts; other fields only break ties.
    Box::new(DisjunctionMaxQuery::with_tie_breaker(per_field, FIELD_TIE_BREAKER))
}

/// The product search index. Cheap to share behind an `Arc`: searches never take the writer lock.
pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    /// `None` once closed: the directory's writer lock is released for another process.
    writer: Mutex<Option<IndexWriter>>,
    fields: Fields,
    seq: AtomicI64,
    /// Filter, facet and sort values of the searched segments.
    tables: engine::Tables,
    /// The matches of recently searched words in the current index generation.
    words: engine::WordCache,
}

impl SearchIndex {
    /// Opens the index in `dir`, creating it when missing. An index written with another schema
    /// version, or that cannot be opened, is wiped and recreated empty, so the caller rebuilds it
    /// (`indexed_seq()` then returns 0).
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating search index dir {}", dir.display()))?;
        let (schema, _) = build_schema();
        match Self::open_existing(dir, &schema) {
            Ok(Some((index, seq))) => return Self::from_index(index, seq),
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(dir = %dir.display(), error = %err, "search index unusable; rebuilding it");
                wipe_dir(dir)?;
            }
        }
        let directory = MmapDirectory::open(dir).context("opening search index dir")?;
        let index = Index::create(directory, schema, Default::default()).context("creating search index")?;
        Self::init_new(index)
    }

    /// An index in RAM (tests).
    pub fn in_memory() -> anyhow::Result<Self> {
        let (schema, _) = build_schema();
        Self::init_new(Index::create_in_ram(schema))
    }

    /// Returns the index and its sequence number, `None` when `dir` holds no index, or an error
    /// when it holds one that must be rebuilt.
    fn open_existing(dir: &Path, schema: &Schema) -> anyhow::Result<Option<(Index, i64)>> {
        let directory = MmapDirectory::open(dir)?;
        if !Index::exists(&directory)? {
            return Ok(None);
        }
        let index = Index::open(directory)?;
        let payload = index.load_metas()?.payload.unwrap_or_default();
        let payload: CommitPayload = serde_json::from_str(&payload).context("missing or malformed commit payload")?;
        if payload.schema_version != SCHEMA_VERSION {
            anyhow::bail!("schema version {} != {}", payload.schema_version, SCHEMA_VERSION);
        }
        if index.schema() != *schema {
            anyhow::bail!("schema differs from the one this code writes");
        }
        // Loading every segment once finds missing or corrupt segment files now, while the index
        // can still be rebuilt, rather than at the first search.
        let reader: IndexReader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        drop(reader);
        Ok(Some((index, payload.seq)))
    }

    /// Writes the first commit (with its payload) of a fresh index.
    fn init_new(index: Index) -> anyhow::Result<Self> {
        let this = Self::from_index(index, 0)?;
        this.write(|_| Ok(0))?;
        Ok(this)
    }

    fn from_index(index: Index, seq: i64) -> anyhow::Result<Self> {
        index.tokenizers().register(TOKENIZER, analyzer());
        let (_, fields) = build_schema();
        let writer = index.writer(WRITER_MEMORY_BYTES).context("creating index writer")?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .context("creating index reader")?;
        Ok(Self {
            index,
            reader,
            writer: Mutex::new(Some(writer)),
            fields,
            seq: AtomicI64::new(seq),
            tables: engine::Tables::new(vec![fields.name, fields.brand, fields.category, fields.sku]),
            words: engine::WordCache::default(),
        })
    }

    fn lock_writer(&self) -> MutexGuard<'_, Option<IndexWriter>> {
        // A panic while holding the lock leaves at worst uncommitted operations, which the next
        // commit or rollback deals with, so a poisoned lock is still usable.
        self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Commits staged operations with `seq` in the payload and makes them visible to searches.
    fn commit(&self, writer: &mut IndexWriter, seq: i64) -> anyhow::Result<()> {
        let payload = serde_json::to_string(&CommitPayload {
            schema_version: SCHEMA_VERSION,
            seq,
        })?;
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        self.seq.store(seq, Ordering::SeqCst);
        self.reload()
    }

    /// Makes the last commit visible to searches, dropping the word matches of the generation
    /// before, and reads the new segments' tables now rather than in the next search.
    fn reload(&self) -> anyhow::Result<()> {
        self.reader.reload()?;
        self.words.clear();
        self.tables.of(&self.reader.searcher())?;
        Ok(())
    }

    /// The change sequence number of the last commit (0 for a new index).
    pub fn indexed_seq(&self) -> i64 {
        self.seq.load(Ordering::SeqCst)
    }

    /// Upserts `docs`, deletes `removed` ids, records `seq` (never going backwards), commits once
    /// and reloads the reader, so a search right after sees the change. Blocking.
    pub fn apply(&self, docs: &[SearchDoc], removed: &[String], seq: i64) -> anyhow::Result<()> {
        self.write(|writer| {
            for id in removed {
                writer.delete_term(Term::from_field_text(self.fields.id, id));
            }
            for doc in docs {
                writer.delete_term(Term::from_field_text(self.fields.id, &doc.id));
                writer.add_document(self.to_document(doc))?;
            }
            Ok(seq.max(self.indexed_seq()))
        })
    }

    /// Removes every document (a full rebuild follows) and commits with seq 0.
    pub fn clear(&self) -> anyhow::Result<()> {
        self.write(|writer| {
            writer.delete_all_documents()?;
            Ok(0)
        })
    }

    /// Stages operations under the writer lock, then commits them with the returned sequence
    /// number. On failure the staged operations are rolled back, so they cannot leak into a
    /// later commit.
    fn write(&self, stage: impl FnOnce(&mut IndexWriter) -> anyhow::Result<i64>) -> anyhow::Result<()> {
        let mut guard = self.lock_writer();
        let writer = guard.as_mut().context("the search index is closed")?;
        let result = stage(writer).and_then(|seq| self.commit(writer, seq));
        if result.is_err() {
            if let Err(err) = writer.rollback() {
                tracing::error!(error = %err, "search index rollback failed");
            }
        }
        result
    }

    /// Releases the writer (and the directory lock) once running merges finish; searches keep
    /// working, writes fail. A process that stops, or a test restarting the app, closes it.
    pub fn close(&self) {
        let writer = self.lock_writer().take();
        if let Some(writer) = writer {
            if let Err(err) = writer.wait_merging_threads() {
                tracing::warn!(error = %err, "search index merges did not finish cleanly");
            }
        }
    }

    /// Merges every segment into one. A query costs about the same per segment (typo and prefix
    /// automata walk each segment's term dictionary), so after a large build this makes searches
    /// several times cheaper. Blocking; a no-op with fewer than two segments.
    pub fn optimize(&self) -> anyhow::Result<()> {
        let mut guard = self.lock_writer();
        // Background merges hold some segments; let them finish (this consumes the writer),
        // then merge everything with a fresh writer.
        let writer = guard.take().context("the search index is closed")?;
        writer.wait_merging_threads()?;
        let writer = guard.insert(self.index.writer(WRITER_MEMORY_BYTES)?);
        let segments = self.index.searchable_segment_ids()?;
        if segments.len() < 2 {
            return Ok(());
        }
        writer.merge(&segments).wait()?;
        self.reload()
    }

    /// The number of segments searches go through.
    pub fn segments(&self) -> usize {
        self.reader.searcher().segment_readers().len()
    }

    /// Diagnostics: (word cache entries, word cache bytes).
    pub fn cache_sizes(&self) -> (u64, u64) {
        self.words.size()
    }

    /// The number of searchable documents.
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    fn to_document(&self, d: &SearchDoc) -> TantivyDocument {
        let f = &self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_text(f.id, &d.id);
        doc.add_text(f.name, &d.name);
        let brand = d.brand.trim();
        if !brand.is_empty() {
            doc.add_text(f.brand, brand);
            doc.add_text(f.brand_key, brand.to_lowercase());
            doc.add_text(f.brand_facet, brand);
        }
        for name in &d.category_names {
            doc.add_text(f.category, name);
        }
        // A repeated id would be counted twice in the category facet.
        let mut seen = HashSet::new();
        for id in d.category_ids.iter().filter(|id| seen.insert(id.as_str())) {
            doc.add_text(f.category_ids, id);
        }
        doc.add_text(f.description, &d.description);
        for sku in &d.skus {
            doc.add_text(f.sku, sku);
            doc.add_text(f.sku_key, sku.trim().to_lowercase());
        }
        doc.add_i64(f.price_min, d.price_min);
        doc.add_i64(f.price_max, d.price_max);
        doc.add_i64(f.rating, d.rating_x100);
        doc.add_i64(f.rating_count, d.rating_count);
        doc.add_bool(f.in_stock, d.in_stock);
        doc.add_i64(f.created_at, d.created_at);
        doc
    }

    /// The fields a query word is looked for in, with their boosts.
    fn text_fields(&self) -> [(Field, Score); 5] {
        let f = &self.fields;
        [
            (f.name, 4.0),
            (f.brand, 3.0),
            (f.category, 2.0),
            (f.description, DESCRIPTION_BOOST),
            (f.sku, 2.0),
        ]
    }

    /// Per segment, the documents the text matches with their scores: those matching every word
    /// in some field, and those whose SKU equals the whole text. `None` when the text has no words.
    fn text_matches(
        &self,
        searcher: &Searcher,
        tables: &[Arc<engine::SegmentTable>],
        text: &str,
    ) -> tantivy::Result<Option<Vec<engine::Matches>>> {
        let words = query_words(text);
        let Some(last) = words.len().checked_sub(1) else {
            return Ok(None);
        };
        let generation = searcher.generation().generation_id();
        let fields = self.text_fields();
        let mut matches = Vec::with_capacity(words.len());
        for (i, (word, cut)) in words.iter().enumerate() {
            let key = (generation, word.clone(), *cut, i == last);
            matches.push(self.words.get_or_compute(key, || {
                let query = word_query(tables, &fields, word, *cut, i == last);
                engine::WordMatches::compute(searcher, query.as_ref())
            })?);
        }
        let sku = text.trim().to_lowercase();
        let sku = if sku.is_empty() || sku.len() > MAX_INDEXED_TOKEN_BYTES || sku.contains(char::is_whitespace) {
            None
        } else {
            let term = TermQuery::new(
                Term::from_field_text(self.fields.sku_key, &sku),
                IndexRecordOption::Basic,
            );
            Some(engine::WordMatches::compute(
                searcher,
                &BoostQuery::new(Box::new(term), SKU_EXACT_BOOST),
            )?)
        };
        Ok(Some(engine::combine(
            searcher.segment_readers().len(),
            &matches,
            sku.as_ref(),
        )))
    }

    /// Runs a search. Never takes the writer lock.
    pub fn search(&self, query: &SearchQuery) -> anyhow::Result<SearchResult> {
        let searcher = self.reader.searcher();
        let tables = self.tables.of(&searcher)?;
        let text = self.text_matches(&searcher, &tables, &query.text)?;
        let outcome = engine::execute(
            &searcher,
            &tables,
            engine::Plan {
                filters: &query.filters,
                text,
                sort: query.sort,
                offset: query.offset,
                limit: query.limit,
                with_facets: query.with_facets,
            },
        );
        let hits = outcome
            .window
            .into_iter()
            .map(|(score, address)| {
                let id = match tables[address.segment_ord as usize].id(address.doc_id) {
                    Some(id) => id.to_owned(),
                    None => self.stored_text(&searcher, address, self.fields.id)?,
                };
                Ok(Hit { id, score })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(SearchResult {
            total: outcome.total,
            hits,
            facets: outcome.facets,
        })
    }

    fn stored_text(&self, searcher: &tantivy::Searcher, address: DocAddress, field: Field) -> anyhow::Result<String> {
        let doc: TantivyDocument = searcher.doc(address)?;
        doc.get_first(field)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| {
                anyhow!(
                    "indexed document lacks its stored {}",
                    self.index.schema().get_field_name(field)
                )
            })
    }

    /// Autocomplete: up to `limit` distinct product names matching `prefix` (the last word as a
    /// prefix, earlier words exact or with typo tolerance), best first. Empty prefix → empty vec.
    pub fn suggest(&self, prefix: &str, limit: usize) -> anyhow::Result<Vec<String>> {
        let words = query_words(prefix);
        let limit = limit.min(MAX_SUGGEST);
        if words.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let name = [(self.fields.name, 4.0)];
        let last = words.len() - 1;
        let searcher = self.reader.searcher();
        let tables = self.tables.of(&searcher)?;
        let clauses = words
            .iter()
            .enumerate()
            .map(|(i, (word, cut))| {
                let q = if i == last {
                    // Unlike search, autocomplete completes even one- and two-letter words.
                    let term = Term::from_field_text(self.fields.name, word);
                    let exact = TermQuery::new(term.clone(), IndexRecordOption::WithFreqs);
                    let starts = boosted(Box::new(FuzzyTermQuery::new_prefix(term, 0, true)), PREFIX_FACTOR);
                    Box::new(BooleanQuery::union(vec![Box::new(exact), starts])) as Box<dyn Query>
                } else {
                    word_query(&tables, &name, word, *cut, false)
                };
                (Occur::Must, q)
            })
            .collect();
        let query = BooleanQuery::new(clauses);
        // Ties on the text score go to the most reviewed product; several products can share a
        // name, so more are fetched than returned.
        let collector = TopDocs::with_limit(limit * 4).tweak_score(|segment: &SegmentReader| {
            let popularity = segment.fast_fields().i64(F_RATING_COUNT).ok();
            move |doc: DocId, score: Score| (score, popularity.as_ref().and_then(|c| c.first(doc)).unwrap_or(0))
        });
        let mut seen = HashSet::new();
        let mut names = Vec::new();
        for (_, address) in searcher.search(&query, &collector)? {
            let name = self.stored_text(&searcher, address, self.fields.name)?;
            if seen.insert(name.to_lowercase()) {
                names.push(name);
                if names.len() == limit {
                    break;
                }
            }
        }
        Ok(names)
    }
}

/// Deletes everything inside `dir` (but not `dir` itself).
fn wipe_dir(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn doc(id: &str, name: &str) -> SearchDoc {
        SearchDoc {
            id: id.to_string(),
            name: name.to_string(),
            brand: String::new(),
            category_names: Vec::new(),
            category_ids: Vec::new(),
            description: String::new(),
            skus: Vec::new(),
            price_min: 1_000,
            price_max: 1_000,
            rating_x100: 0,
            rating_count: 0,
            in_stock: true,
            created_at: 0,
        }
    }

    #[test]
    fn a_name_match_outranks_a_brand_and_description_match() {
        let with = |id: &str, name: &str, brand: &str| SearchDoc {
            brand: brand.to_string(),
            description: format!("{name} by {brand}."),
            ..doc(id, name)
        };
        let index = index_with(&[
            with("hp", "Wireless Headphones", "Sonic"),
            with("sp", "Bluetooth Speaker", "Sonic"),
            with("gs", "Sonic Garden Sprinkler", "Greenly"),
            with("gh", "Garden Hose", "Greenly"),
        ]);
        let result = index.search(&text("sonic")).unwrap();
        let scores: Vec<(String, f32)> = result.hits.iter().map(|h| (h.id.clone(), h.score)).collect();
        assert_eq!(scores[0].0, "gs", "{scores:?}");
        assert_eq!(scores.len(), 3);
    }

    fn index_with(docs: &[SearchDoc]) -> SearchIndex {
        let index = SearchIndex::in_memory().unwrap();
        index.apply(docs, &[], 1).unwrap();
        index
    }

    fn text(text: &str) -> SearchQuery {
        SearchQuery {
            text: text.to_string(),
            limit: 100,
            ..Default::default()
        }
    }

    fn ids(index: &SearchIndex, query: &SearchQuery) -> Vec<String> {
        index.search(query).unwrap().hits.into_iter().map(|h| h.id).collect()
    }

    #[test]
    fn searches_run_concurrently_with_writes() {
        fn check<T: Send + Sync>() {}
        check::<SearchIndex>();
        let index = index_with(&[doc("a", "Garden Hose")]);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..50 {
                        let result = index.search(&text("garden")).unwrap();
                        assert!(result.total >= 1);
                    }
                });
            }
            for i in 0..10 {
                index
                    .apply(&[doc(&format!("g{i}"), "Garden Chair")], &[], i + 2)
                    .unwrap();
            }
        });
        assert_eq!(index.search(&text("garden")).unwrap().total, 11);
    }

    #[test]
    fn field_boosts_rank_name_over_brand_over_category_over_description() {
        let mut name = doc("name", "Wireless Mouse");
        name.brand = "Logi".into();
        name.category_names = vec!["Electronics".into(), "Mice".into()];
        name.description = "A handy pointing device for the office".into();
        let mut brand = doc("brand", "Ergo Mouse");
        brand.brand = "Wireless Works".into();
        brand.category_names = vec!["Electronics".into(), "Mice".into()];
        brand.description = "A comfortable pointing device for long days".into();
        let mut category = doc("category", "Office Mouse");
        category.brand = "Plain".into();
        category.category_names = vec!["Electronics".into(), "Wireless".into()];
        category.description = "A plain pointing device for everyone".into();
        let mut description = doc("description", "Basic Mouse");
        description.brand = "Cheapo".into();
        description.category_names = vec!["Electronics".into(), "Mice".into()];
        description.description = "A wireless pointing device that is cheap".into();
        let index = index_with(&[description, category, brand, name]);
        assert_eq!(
            ids(&index, &text("wireless")),
            ["name", "brand", "category", "description"]
        );
    }

    #[test]
    fn typos_are_tolerated_by_word_length() {
        let index = index_with(&[
            doc("hp", "Studio Headphones"),
            doc("wl", "Wireless Charger"),
            doc("car", "Sports Car"),
        ]);
        // Nine letters allow two edits; seven letters allow one.
        assert_eq!(ids(&index, &text("headphnes")), ["hp"]);
        assert_eq!(ids(&index, &text("wirless")), ["wl"]);
        // A transposition counts as one edit.
        assert_eq!(ids(&index, &text("wrieless")), ["wl"]);
        // Three-letter words must match exactly: "cat" finds nothing, while "car" does.
        assert_eq!(ids(&index, &text("car")), ["car"]);
        assert!(ids(&index, &text("cat")).is_empty());
        // Seven letters allow one edit only, eight allow two.
        assert!(ids(&index, &text("wirexxs")).is_empty());
        assert_eq!(ids(&index, &text("wirelxxs")), ["wl"]);
    }

    #[test]
    fn exact_match_outscores_fuzzy_match() {
        let index = index_with(&[doc("short", "Cotton Short"), doc("shirt", "Cotton Shirt")]);
        let result = index.search(&text("shirt")).unwrap();
        let found: Vec<&str> = result.hits.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(found, ["shirt", "short"]);
        assert!(result.hits[0].score > result.hits[1].score);
        // Not being the last word, "shirt" gets no prefix bonus here: the exact term alone wins.
        assert_eq!(ids(&index, &text("shirt cotton")), ["shirt", "short"]);
    }

    #[test]
    fn last_word_matches_as_prefix() {
        let index = index_with(&[doc("bt", "Bluetooth Speaker"), doc("hp", "Studio Headphones")]);
        assert_eq!(ids(&index, &text("blu")), ["bt"]);
        assert_eq!(ids(&index, &text("speaker blu")), ["bt"]);
        assert_eq!(ids(&index, &text("headph")), ["hp"]);
        // Only the last word is a prefix, and two letters are too short for one.
        assert!(ids(&index, &text("blu speaker")).is_empty());
        assert!(ids(&index, &text("bl")).is_empty());
    }

    #[test]
    fn every_word_must_match_in_some_field() {
        let mut a = doc("a", "Wireless Headphones");
        a.brand = "Acme Audio".into();
        let b = doc("b", "Wireless Mouse");
        let c = doc("c", "Studio Headphones");
        let index = index_with(&[a, b, c]);
        assert_eq!(ids(&index, &text("wireless headphones")), ["a"]);
        assert_eq!(ids(&index, &text("acme headphones")), ["a"]);
        assert!(ids(&index, &text("wireless studio")).is_empty());
        assert_eq!(index.search(&text("wireless")).unwrap().total, 2);
    }

    #[test]
    fn sku_and_folded_text_are_found() {
        let mut a = doc("a", "Café Table");
        a.skus = vec!["TBL-0042-OAK".into()];
        let index = index_with(&[a, doc("b", "Cafeteria Tray")]);
        assert_eq!(ids(&index, &text("TBL-0042-OAK")), ["a"]);
        assert_eq!(ids(&index, &text("tbl-0042-oak"))[..], ["a"]);
        assert_eq!(ids(&index, &text("cafe table")), ["a"]);
        assert_eq!(ids(&index, &text("CAFÉ")), ["a", "b"]);
        // Words with digits are matched exactly.
        assert!(ids(&index, &text("0043")).is_empty());
    }

    /// A catalog with repeated sort keys, mixed-case brands and boundary prices, applied in
    /// several commits so it spans several segments.
    fn catalog() -> (SearchIndex, Vec<SearchDoc>) {
        let paths: [(&[&str], &[&str]); 5] = [
            (&["el", "au", "hp"], &["Electronics", "Audio", "Headphones"]),
            (&["el", "au"], &["Electronics", "Audio"]),
            (&["el", "cm"], &["Electronics", "Computers"]),
            (&["ho", "kt"], &["Home", "Kitchen"]),
            (&["ho"], &["Home"]),
        ];
        let brands = ["Acme Audio", "Zenith", "Orbit", "ACME AUDIO", "Nimbus"];
        let prices = [
            0, 999, 1_000, 2_499, 2_500, 4_999, 5_000, 10_000, 24_999, 25_000, 99_000,
        ];
        let ratings = [0, 99, 100, 250, 399, 400, 450, 500];
        let docs: Vec<SearchDoc> = (0..60)
            .map(|i: usize| {
                let (cat_ids, cat_names) = paths[i % paths.len()];
                let mut d = doc(&format!("p{i:02}"), &format!("Product {i} Gadget"));
                d.brand = brands[(i * 7) % brands.len()].into();
                d.category_ids = cat_ids.iter().map(|s| s.to_string()).collect();
                d.category_names = cat_names.iter().map(|s| s.to_string()).collect();
                d.description = if i.is_multiple_of(3) {
                    "Durable and wireless".into()
                } else {
                    "Durable".into()
                };
                d.price_min = prices[(i * 5) % prices.len()];
                d.price_max = d.price_min + 500;
                d.rating_x100 = ratings[(i * 3) % ratings.len()];
                d.rating_count = (i % 4) as i64;
                d.in_stock = !i.is_multiple_of(5);
                d.created_at = 1_700_000_000_000 + ((i * 13) % 20) as i64;
                d
            })
            .collect();
        let index = SearchIndex::in_memory().unwrap();
        for (n, chunk) in docs.chunks(20).enumerate() {
            index.apply(chunk, &[], n as i64 + 1).unwrap();
        }
        (index, docs)
    }

    fn filters(set: impl FnOnce(&mut Filters)) -> Filters {
        let mut filters = Filters::default();
        set(&mut filters);
        filters
    }

    #[test]
    fn filters_select_exactly_the_matching_docs() {
        let (index, docs) = catalog();
        type Keep = fn(&SearchDoc) -> bool;
        let cases: [(Filters, Keep); 9] = [
            // A parent category includes its descendants.
            (filters(|f| f.category_id = Some("au".into())), |d| {
                d.category_ids.contains(&"au".into())
            }),
            (filters(|f| f.category_id = Some("hp".into())), |d| {
                d.category_ids.last().is_some_and(|c| c == "hp")
            }),
            (
                filters(|f| f.brands = vec!["acme audio".into(), " ZENITH".into()]),
                |d| ["acme audio", "zenith"].contains(&d.brand.to_lowercase().as_str()),
            ),
            // Both price bounds are inclusive.
            (
                filters(|f| (f.price_min, f.price_max) = (Some(1_000), Some(5_000))),
                |d| (1_000..=5_000).contains(&d.price_min),
            ),
            (filters(|f| f.price_max = Some(999)), |d| d.price_min <= 999),
            (filters(|f| f.min_rating_x100 = Some(400)), |d| d.rating_x100 >= 400),
            (filters(|f| f.in_stock = Some(true)), |d| d.in_stock),
            (filters(|f| f.in_stock = Some(false)), |d| !d.in_stock),
            (
                filters(|f| (f.category_id, f.in_stock) = (Some("el".into()), Some(true))),
                |d| d.category_ids[0] == "el" && d.in_stock,
            ),
        ];
        for (filters, keep) in cases {
            let mut expected: Vec<String> = docs.iter().filter(|d| keep(d)).map(|d| d.id.clone()).collect();
            expected.sort();
            assert!(
                !expected.is_empty() && expected.len() < docs.len(),
                "not selective: {filters:?}"
            );
            let query = SearchQuery {
                filters: filters.clone(),
                limit: 100,
                ..Default::default()
            };
            let result = index.search(&query).unwrap();
            let mut found: Vec<String> = result.hits.into_iter().map(|h| h.id).collect();
            found.sort();
            assert_eq!(found, expected, "{filters:?}");
            assert_eq!(result.total, expected.len());
        }
        // Filters combine with text.
        let query = SearchQuery {
            filters: filters(|f| f.category_id = Some("ho".into())),
            ..text("wireless")
        };
        let expected = docs
            .iter()
            .filter(|d| d.category_ids[0] == "ho" && d.description.contains("wireless"));
        assert_eq!(index.search(&query).unwrap().total, expected.count());
    }

    #[test]
    fn sorts_order_results_and_page_deterministically() {
        let (index, docs) = catalog();
        let by_id: HashMap<&str, &SearchDoc> = docs.iter().map(|d| (d.id.as_str(), d)).collect();
        type Key = fn(&SearchDoc) -> (i64, i64);
        let cases: [(Sort, &str, Key); 6] = [
            (Sort::PriceAsc, "", |d| (-d.price_min, 0)),
            (Sort::PriceDesc, "", |d| (d.price_min, 0)),
            (Sort::Newest, "", |d| (d.created_at, 0)),
            (Sort::Relevance, "", |d| (d.created_at, 0)),
            (Sort::Rating, "", |d| (d.rating_x100, d.rating_count)),
            (Sort::Newest, "durable", |d| (d.created_at, 0)),
        ];
        for (sort, q, key) in cases {
            let query = |offset, limit| SearchQuery {
                text: q.into(),
                sort,
                offset,
                limit,
                ..Default::default()
            };
            let full = ids(&index, &query(0, 100));
            assert_eq!(full.len(), docs.len(), "{sort:?}");
            let keys: Vec<(i64, i64)> = full.iter().map(|id| key(by_id[id.as_str()])).collect();
            assert!(keys.windows(2).all(|w| w[0] >= w[1]), "{sort:?} out of order: {keys:?}");
            for limit in [5, 7] {
                let mut paged = ids(&index, &query(0, limit));
                paged.extend(ids(&index, &query(limit, limit)));
                assert_eq!(paged, full[..2 * limit], "{sort:?} paging by {limit}");
            }
        }
        // Relevance with text is by descending score.
        let result = index.search(&text("gadget wireless")).unwrap();
        assert!(result.hits.windows(2).all(|w| w[0].score >= w[1].score));
        // A window past the end is empty but still counts.
        let past = index
            .search(&SearchQuery {
                offset: 10_000,
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert!(past.hits.is_empty());
        assert_eq!(past.total, docs.len());
        let huge = index
            .search(&SearchQuery {
                offset: usize::MAX,
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert!(huge.hits.is_empty());
    }

    fn brute_force_facets(docs: &[&SearchDoc]) -> Facets {
        let mut categories: HashMap<String, u64> = HashMap::new();
        let mut brands: HashMap<String, u64> = HashMap::new();
        for d in docs {
            for c in &d.category_ids {
                *categories.entry(c.clone()).or_default() += 1;
            }
            *brands.entry(d.brand.to_lowercase()).or_default() += 1;
        }
        let mut categories: Vec<_> = categories.into_iter().collect();
        categories.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut brands: Vec<_> = brands.into_iter().collect();
        brands.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let prices = PRICE_BUCKETS
            .iter()
            .map(|&(from, to)| PriceBucket {
                from,
                to,
                count: docs
                    .iter()
                    .filter(|d| d.price_min >= from && to.is_none_or(|t| d.price_min < t))
                    .count() as u64,
            })
            .collect();
        let ratings = [4u8, 3, 2, 1]
            .into_iter()
            .map(|r| {
                (
                    r,
                    docs.iter().filter(|d| d.rating_x100 >= i64::from(r) * 100).count() as u64,
                )
            })
            .collect();
        Facets {
            categories,
            brands,
            prices,
            ratings,
        }
    }

    #[test]
    fn facets_match_brute_force_counts() {
        let (index, docs) = catalog();
        let faceted = |text: &str, filters: Filters| SearchQuery {
            text: text.into(),
            filters,
            with_facets: true,
            ..Default::default()
        };
        let queries = [
            faceted("", Filters::default()),
            faceted("wireless", Filters::default()),
            faceted(
                "",
                filters(|f| (f.category_id, f.in_stock) = (Some("el".into()), Some(true))),
            ),
        ];
        let keeps: [&dyn Fn(&SearchDoc) -> bool; 3] = [&|_| true, &|d| d.description.contains("wireless"), &|d| {
            d.category_ids[0] == "el" && d.in_stock
        }];
        for (query, keep) in queries.iter().zip(keeps) {
            let matching: Vec<&SearchDoc> = docs.iter().filter(|d| keep(d)).collect();
            let mut facets = index.search(query).unwrap().facets.unwrap();
            let expected = brute_force_facets(&matching);
            // The displayed brand spelling is checked apart; counts are per lowercase name.
            let mut lowered: Vec<(String, u64)> = facets.brands.iter().map(|(b, n)| (b.to_lowercase(), *n)).collect();
            lowered.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            facets.brands = lowered;
            assert_eq!(facets, expected, "{query:?}");
        }
        let facets = index.search(&queries[0]).unwrap().facets.unwrap();
        // The parent counts its descendants, and 1 000 falls in [1 000, 2 500).
        let count = |id: &str| facets.categories.iter().find(|c| c.0 == id).map(|c| c.1);
        assert_eq!(count("el"), Some(36));
        assert_eq!(count("au"), Some(24));
        assert_eq!(count("hp"), Some(12));
        let zero_to_ten: u64 = docs.iter().filter(|d| d.price_min < 1_000).count() as u64;
        assert_eq!(
            facets.prices[0],
            PriceBucket {
                from: 0,
                to: Some(1_000),
                count: zero_to_ten
            }
        );
        assert!(facets
            .brands
            .iter()
            .any(|(b, _)| b == "Acme Audio" || b == "ACME AUDIO"));
        assert!(index.search(&SearchQuery::default()).unwrap().facets.is_none());
    }

    /// A word's query as it was built before the vocabularies: typos by tantivy's Levenshtein
    /// automaton over each field's whole term dictionary.
    fn fuzzy_word_query(fields: &[(Field, Score)], word: &str, cut: bool, prefix: bool) -> Box<dyn Query> {
        let distance = typo_distance(word);
        let prefix = cut || (prefix && word.chars().count() >= MIN_PREFIX_CHARS);
        let mut per_field: Vec<Box<dyn Query>> = Vec::new();
        for &(field, boost) in fields {
            let term = Term::from_field_text(field, word);
            let mut alternatives: Vec<Box<dyn Query>> = Vec::new();
            if !cut {
                alternatives.push(Box::new(ConstScoreQuery::new(
                    Box::new(TermQuery::new(term.clone(), IndexRecordOption::Basic)),
                    boost * EXACT_WEIGHT,
                )));
                let exact = TermQuery::new(term.clone(), IndexRecordOption::WithFreqs);
                alternatives.push(boosted(Box::new(exact), boost * BM25_WEIGHT));
            }
            if distance > 0 && !cut && boost > DESCRIPTION_BOOST {
                let fuzzy = FuzzyTermQuery::new(term.clone(), distance, true);
                alternatives.push(boosted(Box::new(fuzzy), boost * EXACT_WEIGHT * FUZZY_FACTOR));
            }
            if prefix {
                let starts = FuzzyTermQuery::new_prefix(term, 0, true);
                alternatives.push(boosted(Box::new(starts), boost * EXACT_WEIGHT * PREFIX_FACTOR));
            }
            per_field.push(Box::new(BooleanQuery::union(alternatives)));
        }
        Box::new(DisjunctionMaxQuery::with_tie_breaker(per_field, FIELD_TIE_BREAKER))
    }

    /// The text matches and scores tantivy's own boolean query gives: every word required, the
    /// SKU as an alternative.
    fn tantivy_reference(index: &SearchIndex, text: &str) -> Vec<(String, f32)> {
        let words = query_words(text);
        let last = words.len() - 1;
        let fields = index.text_fields();
        let clauses = words
            .iter()
            .enumerate()
            .map(|(i, (word, cut))| (Occur::Must, fuzzy_word_query(&fields, word, *cut, i == last)))
            .collect();
        let mut query: Box<dyn Query> = Box::new(BooleanQuery::new(clauses));
        let sku = text.trim().to_lowercase();
        if !sku.contains(char::is_whitespace) {
            let term = TermQuery::new(
                Term::from_field_text(index.fields.sku_key, &sku),
                IndexRecordOption::Basic,
            );
            query = Box::new(BooleanQuery::union(vec![
                query,
                boosted(Box::new(term), SKU_EXACT_BOOST),
            ]));
        }
        let searcher = index.reader.searcher();
        let top = searcher
            .search(query.as_ref(), &TopDocs::with_limit(1_000).order_by_score())
            .unwrap();
        let mut found: Vec<(String, f32)> = top
            .into_iter()
            .map(|(score, address)| (index.stored_text(&searcher, address, index.fields.id).unwrap(), score))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    #[test]
    fn matches_and_scores_are_tantivys_own() {
        let (index, _) = catalog();
        let mut skus = doc("sku", "Gadget Case");
        skus.skus = vec!["GAD-7".into()];
        index.apply(&[skus], &["p07".to_owned(), "p31".to_owned()], 10).unwrap();
        assert!(
            index.segments() > 1,
            "deletes and several segments are part of the check"
        );
        for text in [
            "gadget",
            "gadgte",
            "product gad",
            "durable wireless",
            "prodcut gadget",
            "acme",
            "acme audio gadget",
            "electronics headphones",
            "home kitchen product",
            "gad-7",
            "gad",
            "nothing matches this",
        ] {
            let mut ours: Vec<(String, f32)> = index
                .search(&SearchQuery {
                    limit: 1_000,
                    ..text_query_of(text)
                })
                .unwrap()
                .hits
                .into_iter()
                .map(|h| (h.id, h.score))
                .collect();
            ours.sort_by(|a, b| a.0.cmp(&b.0));
            let reference = tantivy_reference(&index, text);
            assert_eq!(reference.is_empty(), text == "nothing matches this", "{text}");
            assert_eq!(ours.len(), reference.len(), "{text}: {ours:?} vs {reference:?}");
            for ((id, score), (ref_id, ref_score)) in ours.iter().zip(&reference) {
                assert_eq!(id, ref_id, "{text}");
                assert!(
                    (score - ref_score).abs() < 1e-4,
                    "{text}: {id} scored {score}, tantivy {ref_score}"
                );
            }
        }
        // Searching again (the words now come from the cache) answers the same.
        let first = index.search(&text_query_of("prodcut gadget")).unwrap();
        assert_eq!(index.search(&text_query_of("prodcut gadget")).unwrap(), first);
    }

    fn text_query_of(text: &str) -> SearchQuery {
        SearchQuery {
            text: text.to_string(),
            limit: 100,
            ..Default::default()
        }
    }

    #[test]
    fn a_deep_category_path_filters_and_counts_every_level() {
        let mut deep = doc("deep", "Deep Gadget");
        deep.category_ids = (0..9).map(|level| format!("c{level}")).collect();
        let mut shallow = doc("shallow", "Shallow Gadget");
        shallow.category_ids = vec!["c0".into(), "c1".into()];
        let index = index_with(&[deep, shallow]);
        for (level, expected) in [
            (0, vec!["deep", "shallow"]),
            (1, vec!["deep", "shallow"]),
            (8, vec!["deep"]),
        ] {
            let query = SearchQuery {
                filters: filters(|f| f.category_id = Some(format!("c{level}"))),
                sort: Sort::PriceAsc,
                ..text("gadget")
            };
            let mut found = ids(&index, &query);
            found.sort();
            assert_eq!(found, expected, "level {level}");
        }
        let facets = index
            .search(&SearchQuery {
                with_facets: true,
                ..text("gadget")
            })
            .unwrap()
            .facets
            .unwrap();
        let count = |id: &str| facets.categories.iter().find(|c| c.0 == id).map(|c| c.1);
        assert_eq!((count("c0"), count("c7"), count("c8")), (Some(2), Some(1), Some(1)));
        assert_eq!(facets.categories.len(), 9);
    }

    #[test]
    fn upsert_replaces_and_delete_removes() {
        let index = index_with(&[doc("a", "Old Lamp"), doc("b", "Desk")]);
        index
            .apply(
                &[doc("a", "New Lamp"), doc("c", "Chair"), doc("c", "Chair Two")],
                &[],
                2,
            )
            .unwrap();
        assert_eq!(index.num_docs(), 3);
        assert!(ids(&index, &text("old")).is_empty());
        assert_eq!(ids(&index, &text("new lamp")), ["a"]);
        assert_eq!(ids(&index, &text("chair")), ["c"]);
        index.apply(&[], &["b".to_string(), "missing".to_string()], 3).unwrap();
        assert_eq!(index.num_docs(), 2);
        assert!(ids(&index, &text("desk")).is_empty());
        assert_eq!(index.indexed_seq(), 3);
        index.clear().unwrap();
        assert_eq!((index.num_docs(), index.indexed_seq()), (0, 0));
    }

    #[test]
    fn optimizing_merges_segments_and_keeps_every_document() {
        let index = SearchIndex::in_memory().unwrap();
        for i in 0..4 {
            index
                .apply(&[doc(&format!("d{i}"), "Garden Hose")], &[], i + 1)
                .unwrap();
        }
        index.apply(&[], &["d0".to_owned()], 5).unwrap();
        assert!(index.segments() > 1);
        index.optimize().unwrap();
        assert_eq!(index.segments(), 1);
        assert_eq!(index.num_docs(), 3);
        assert_eq!(index.indexed_seq(), 5);
        assert_eq!(ids(&index, &text("hose")).len(), 3);
    }

    #[test]
    fn closing_releases_the_directory_for_another_writer() {
        let dir = tempfile::tempdir().unwrap();
        let first = SearchIndex::open(dir.path()).unwrap();
        first.apply(&[doc("a", "Garden Hose")], &[], 3).unwrap();
        assert!(SearchIndex::open(dir.path()).is_err(), "the writer lock is held");
        first.close();
        assert!(first.apply(&[doc("b", "Garden Chair")], &[], 4).is_err());
        assert_eq!(ids(&first, &text("hose")), ["a"], "searches still work");
        let second = SearchIndex::open(dir.path()).unwrap();
        assert_eq!((second.num_docs(), second.indexed_seq()), (1, 3));
    }

    #[test]
    fn seq_and_docs_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let index = SearchIndex::open(dir.path()).unwrap();
            assert_eq!(index.indexed_seq(), 0);
            index.apply(&[doc("a", "Garden Hose")], &[], 42).unwrap();
            // An older sequence number is applied but does not move the mark back.
            index.apply(&[doc("b", "Garden Chair")], &[], 7).unwrap();
            assert_eq!(index.indexed_seq(), 42);
        }
        let index = SearchIndex::open(dir.path()).unwrap();
        assert_eq!(index.indexed_seq(), 42);
        assert_eq!(index.num_docs(), 2);
        assert_eq!(ids(&index, &text("hose")), ["a"]);
    }

    #[test]
    fn other_schema_version_or_garbage_is_rebuilt_empty() {
        let dir = tempfile::tempdir().unwrap();
        {
            let index = SearchIndex::open(dir.path()).unwrap();
            index.apply(&[doc("a", "Garden Hose")], &[], 42).unwrap();
            let mut guard = index.lock_writer();
            let mut prepared = guard.as_mut().unwrap().prepare_commit().unwrap();
            prepared.set_payload(r#"{"schema_version":999,"seq":42}"#);
            prepared.commit().unwrap();
        }
        let index = SearchIndex::open(dir.path()).unwrap();
        assert_eq!((index.num_docs(), index.indexed_seq()), (0, 0));
        index.apply(&[doc("a", "Garden Hose")], &[], 5).unwrap();
        drop(index);
        // A lost segment file makes the index unusable, so it is rebuilt.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "idx") {
                std::fs::remove_file(path).unwrap();
            }
        }
        let index = SearchIndex::open(dir.path()).unwrap();
        assert_eq!((index.num_docs(), index.indexed_seq()), (0, 0));
        index.apply(&[doc("a", "Garden Hose")], &[], 5).unwrap();
        drop(index);
        std::fs::write(dir.path().join("meta.json"), b"not json").unwrap();
        let index = SearchIndex::open(dir.path()).unwrap();
        assert_eq!((index.num_docs(), index.indexed_seq()), (0, 0));
    }

    #[test]
    fn suggest_completes_product_names() {
        let mut popular = doc("d", "Headphones Pro");
        popular.rating_count = 100;
        let index = index_with(&[
            doc("a", "Headphones Lite"),
            popular,
            doc("c", "Head Torch"),
            doc("e", "Wireless Headphones"),
            doc("f", "Wireless Headphones"),
            doc("g", "Garden Hose"),
        ]);
        let names = index.suggest("hea", 10).unwrap();
        assert_eq!(names.len(), 4, "{names:?}");
        assert_eq!(names[0], "Headphones Pro");
        assert!(!names.contains(&"Garden Hose".to_string()));
        assert_eq!(index.suggest("wirless h", 10).unwrap(), ["Wireless Headphones"]);
        assert_eq!(index.suggest("g", 10).unwrap(), ["Garden Hose"]);
        assert_eq!(index.suggest("hea", 2).unwrap().len(), 2);
        assert!(index.suggest("", 10).unwrap().is_empty());
        assert!(index.suggest("  ?! ", 10).unwrap().is_empty());
    }

    #[test]
    fn hostile_input_is_harmless() {
        let index = index_with(&[doc("a", "Garden Hose"), doc("b", "Desk Lamp")]);
        let long = "x".repeat(100_000);
        assert!(index.search(&text(&long)).unwrap().hits.is_empty());
        let many = (0..1_000).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
        assert!(index.search(&text(&many)).is_ok());
        for symbols in ["!!! ??? ---", "   ", "*", "\"\\", "()[]{}:^~"] {
            let result = index.search(&text(symbols)).unwrap();
            assert_eq!(result.total, 2, "{symbols:?} must act as empty text");
        }
        // Query syntax is just punctuation between words.
        assert_eq!(ids(&index, &text("name:garden AND (hose")), Vec::<String>::new());
        assert_eq!(ids(&index, &text("+garden -(hose)*")), ["a"]);
        assert!(index.suggest(&long, 10).unwrap().is_empty());
        assert!(index.suggest(&many, 10).is_ok());
        // A long word is cut and matched as a prefix.
        let mut d = doc("c", "");
        d.description = format!("{}z", "y".repeat(50));
        index.apply(&[d], &[], 2).unwrap();
        assert_eq!(ids(&index, &text(&"y".repeat(60))), ["c"]);
    }
}
