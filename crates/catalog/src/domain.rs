//! The catalog's rules, without I/O: what a valid category, product, variant and review are,
//! how slugs are made, and how a rating average is kept.

use std::collections::{BTreeMap, HashSet};

use platform::FieldError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// The highest price (minor units) a variant may have: ten billion in major units.
pub const MAX_PRICE: i64 = 1_000_000_000_000;
pub const MAX_VARIANTS: usize = 100;
pub const MAX_IMAGES: usize = 20;
pub const MAX_ATTRIBUTES: usize = 50;

/// Where a product is in its life. Only `active` products are visible to shoppers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProductStatus {
    Draft,
    Active,
    Archived,
}

impl ProductStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Active => "active",
            Self::Archived => "archived",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "draft" => Some(Self::Draft),
            "active" => Some(Self::Active),
            "archived" => Some(Self::Archived),
            _ => None,
        }
    }
}

/// A review's moderation state. Only `approved` reviews are shown and counted in the rating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReviewStatus {
    Pending,
    Approved,
    Rejected,
}

impl ReviewStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "pending" => Some(Self::Pending),
            "approved" => Some(Self::Approved),
            "rejected" => Some(Self::Rejected),
            _ => None,
        }
    }
}

/// How a product list is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SortOrder {
    /// Best match first for a search; newest first for a plain list.
    #[default]
    Relevance,
    PriceAsc,
    PriceDesc,
    Newest,
    Rating,
}

/// A trimmed text between `min` and `max` characters, without control characters.
pub fn text(field: &str, raw: &str, min: usize, max: usize) -> Result<String, FieldError> {
    let value = raw.trim();
    let length = value.chars().count();
    if length < min {
        return Err(FieldError::new(
            field,
            if min == 1 {
                "must not be empty".to_owned()
            } else {
                format!("must have at least {min} characters")
            },
        ));
    }
    if length > max {
        return Err(FieldError::new(field, format!("must have at most {max} characters")));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(FieldError::new(field, "must not contain control characters"));
    }
    Ok(value.to_owned())
}

/// A URL-safe identifier: lower-case letters, digits and single hyphens, 1–120 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slug(String);

impl Slug {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let ok = !raw.is_empty()
            && raw.len() <= 120
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !raw.starts_with('-')
            && !raw.ends_with('-')
            && !raw.contains("--")
            // Lookups take an id or a slug: a slug shaped like an id would be ambiguous.
            && Uuid::try_parse(raw).is_err();
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(FieldError::new(
                field,
                "must be 1–120 lower-case letters, digits and single hyphens",
            ))
        }
    }

    /// The slug a name suggests: ASCII-folded, lower case, words joined by hyphens.
    pub fn from_name(name: &str) -> Option<Self> {
        let mut slug = String::with_capacity(name.len());
        for c in name.chars().flat_map(fold) {
            if c.is_ascii_alphanumeric() {
                slug.push(c.to_ascii_lowercase());
            } else if !slug.is_empty() && !slug.ends_with('-') {
                slug.push('-');
            }
        }
        let trimmed: String = slug.trim_end_matches('-').chars().take(120).collect();
        let trimmed = trimmed.trim_end_matches('-');
        Self::parse("slug", trimmed).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Folds the common accented Latin letters to ASCII, for slugs.
fn fold(c: char) -> impl Iterator<Item = char> {
    let folded: &str = match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'À' | 'Á' | 'Â' | 'Ã' | 'Ä' | 'Å' => "a",
        'æ' | 'Æ' => "ae",
        'ç' | 'Ç' => "c",
        'è' | 'é' | 'ê' | 'ë' | 'È' | 'É' | 'Ê' | 'Ë' => "e",
        'ì' | 'í' | 'î' | 'ï' | 'Ì' | 'Í' | 'Î' | 'Ï' => "i",
        'ñ' | 'Ñ' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ö' | 'Ø' => "o",
        'ù' | 'ú' | 'û' | 'ü' | 'Ù' | 'Ú' | 'Û' | 'Ü' => "u",
        'ý' | 'ÿ' | 'Ý' => "y",
        'ß' => "ss",
        '&' => " and ",
        _ => "",
    };
    let single = folded.is_empty().then_some(c);
    folded.chars().chain(single)
}

/// Collects the errors of several parses; `finish` answers them all at once.
#[derive(Debug, Default)]
pub struct Errors(Vec<FieldError>);

impl Errors {
    pub fn take<T>(&mut self, result: Result<T, FieldError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.0.push(error);
                None
            }
        }
    }

    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    pub fn finish(self) -> Result<(), Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

// ----- categories ---------------------------------------------------------------------------

/// A valid category name and slug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategorySpec {
    pub name: String,
    pub slug: Slug,
    pub parent_id: Option<Uuid>,
    pub position: i64,
}

impl CategorySpec {
    pub fn parse(
        name: &str,
        slug: Option<&str>,
        parent_id: Option<Uuid>,
        position: i64,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors = Errors::default();
        let name = errors.take(text("name", name, 1, 100));
        let slug = match (slug, &name) {
            (Some(raw), _) => errors.take(Slug::parse("slug", raw)),
            (None, Some(name)) => errors.take(
                Slug::from_name(name)
                    .ok_or_else(|| FieldError::new("slug", "cannot be derived from the name; give one")),
            ),
            (None, None) => None,
        };
        if !(0..=1_000_000).contains(&position) {
            errors.push("position", "must be between 0 and 1000000");
        }
        errors.finish()?;
        match (name, slug) {
            (Some(name), Some(slug)) => Ok(Self {
                name,
                slug,
                parent_id,
                position,
            }),
            _ => Err(vec![FieldError::new("name", "is invalid")]),
        }
    }
}

/// The materialized path of a category: its ancestors' ids and its own, each followed by `/`,
/// e.g. `/root-id/child-id/`. "In this category or below" is a prefix match on it.
pub fn category_path(parent_path: Option<&str>, id: &str) -> String {
    format!("{}{id}/", parent_path.unwrap_or("/"))
}

/// The ids on a materialized path, root first.
pub fn path_ids(path: &str) -> Vec<String> {
    path.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

// ----- products -----------------------------------------------------------------------------

/// A key/value specification, such as `Material: cotton`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attribute {
    pub name: String,
    pub value: String,
}

/// An image, in display order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// An `http(s)` URL.
    pub url: String,
    #[serde(default)]
    pub alt: String,
}

/// A variant as a client sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VariantInput {
    /// The stock-keeping unit: unique across the catalog; letters, digits, `-`, `_`, `.`.
    pub sku: String,
    /// Option values such as `{"size": "M", "colour": "blue"}`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Minor units of the shop currency.
    pub price: i64,
    /// The "was" price shown struck through; above `price` when given.
    #[serde(default)]
    pub compare_at_price: Option<i64>,
    #[serde(default)]
    pub weight_grams: Option<i64>,
}

/// Everything a product is made of, as a client sends it (after merging a partial update).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductDraft {
    pub name: String,
    pub slug: Option<String>,
    pub description: String,
    pub brand: String,
    pub category_id: Option<Uuid>,
    pub status: ProductStatus,
    pub attributes: Vec<Attribute>,
    pub images: Vec<Image>,
    pub variants: Vec<VariantInput>,
}

/// A valid product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductSpec {
    pub name: String,
    pub slug: Slug,
    pub description: String,
    pub brand: String,
    pub category_id: Uuid,
    pub status: ProductStatus,
    pub attributes: Vec<Attribute>,
    pub images: Vec<Image>,
    pub variants: Vec<VariantInput>,
}

impl ProductSpec {
    pub fn price_min(&self) -> i64 {
        self.variants.iter().map(|v| v.price).min().unwrap_or(0)
    }

    pub fn price_max(&self) -> i64 {
        self.variants.iter().map(|v| v.price).max().unwrap_or(0)
    }

    pub fn parse(draft: ProductDraft) -> Result<Self, Vec<FieldError>> {
        let mut errors = Errors::default();
        let name = errors.take(text("name", &draft.name, 1, 200));
        let slug = match (&draft.slug, &name) {
            (Some(raw), _) => errors.take(Slug::parse("slug", raw)),
            (None, Some(name)) => errors.take(
                Slug::from_name(name)
                    .ok_or_else(|| FieldError::new("slug", "cannot be derived from the name; give one")),
            ),
            (None, None) => None,
        };
        let description = errors.take(text("description", &draft.description, 0, 10_000));
        let brand = errors.take(text("brand", &draft.brand, 1, 100));
        if draft.category_id.is_none() {
            errors.push("category_id", "is required");
        }
        let attributes = parse_attributes(&mut errors, &draft.attributes);
        let images = parse_images(&mut errors, &draft.images);
        let variants = parse_variants(&mut errors, &draft.variants);
        errors.finish()?;
        match (name, slug, description, brand, draft.category_id) {
            (Some(name), Some(slug), Some(description), Some(brand), Some(category_id)) => Ok(Self {
                name,
                slug,
                description,
                brand,
                category_id,
                status: draft.status,
                attributes,
                images,
                variants,
            }),
            _ => Err(vec![FieldError::new("product", "is invalid")]),
        }
    }
}

fn parse_attributes(errors: &mut Errors, raw: &[Attribute]) -> Vec<Attribute> {
    if raw.len() > MAX_ATTRIBUTES {
        errors.push("attributes", format!("must have at most {MAX_ATTRIBUTES} entries"));
        return Vec::new();
    }
    let mut seen = HashSet::new();
    let mut attributes = Vec::with_capacity(raw.len());
    for (i, attribute) in raw.iter().enumerate() {
        let name = errors.take(text(&format!("attributes/{i}/name"), &attribute.name, 1, 100));
        let value = errors.take(text(&format!("attributes/{i}/value"), &attribute.value, 1, 500));
        if let (Some(name), Some(value)) = (name, value) {
            if !seen.insert(name.to_lowercase()) {
                errors.push(format!("attributes/{i}/name"), "appears twice");
            }
            attributes.push(Attribute { name, value });
        }
    }
    attributes
}

fn parse_images(errors: &mut Errors, raw: &[Image]) -> Vec<Image> {
    if raw.len() > MAX_IMAGES {
        errors.push("images", format!("must have at most {MAX_IMAGES} entries"));
        return Vec::new();
    }
    let mut images = Vec::with_capacity(raw.len());
    for (i, image) in raw.iter().enumerate() {
        let url = image.url.trim();
        let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
        let host_ok = url.split("://").nth(1).is_some_and(|rest| !rest.is_empty());
        if !scheme_ok || !host_ok || url.len() > 2_048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errors.push(
                format!("images/{i}/url"),
                "must be an http(s) URL of at most 2048 characters",
            );
            continue;
        }
        if let Some(alt) = errors.take(text(&format!("images/{i}/alt"), &image.alt, 0, 300)) {
            images.push(Image {
                url: url.to_owned(),
                alt,
            });
        }
    }
    images
}

pub use platform::sku::parse_sku;

fn parse_variants(errors: &mut Errors, raw: &[VariantInput]) -> Vec<VariantInput> {
    if raw.is_empty() {
        errors.push("variants", "must have at least one variant");
        return Vec::new();
    }
    if raw.len() > MAX_VARIANTS {
        errors.push("variants", format!("must have at most {MAX_VARIANTS} entries"));
        return Vec::new();
    }
    let mut skus = HashSet::new();
    let mut combinations = HashSet::new();
    let mut variants = Vec::with_capacity(raw.len());
    for (i, variant) in raw.iter().enumerate() {
        let field = |name: &str| format!("variants/{i}/{name}");
        let sku = errors.take(parse_sku(&field("sku"), &variant.sku));
        if let Some(sku) = &sku {
            if !skus.insert(sku.to_uppercase()) {
                errors.push(field("sku"), "appears twice in this product");
            }
        }
        if !(0..=MAX_PRICE).contains(&variant.price) {
            errors.push(field("price"), "must be between 0 and 1000000000000 minor units");
        }
        if let Some(compare_at) = variant.compare_at_price {
            if compare_at <= variant.price || compare_at > MAX_PRICE {
                errors.push(field("compare_at_price"), "must be above the price");
            }
        }
        if let Some(weight) = variant.weight_grams {
            if !(0..=10_000_000).contains(&weight) {
                errors.push(field("weight_grams"), "must be between 0 and 10000000");
            }
        }
        let mut options = BTreeMap::new();
        if variant.options.len() > 5 {
            errors.push(field("options"), "must have at most 5 entries");
        } else {
            for (key, value) in &variant.options {
                let key = errors.take(text(&field("options"), key, 1, 50));
                let value = errors.take(text(&field("options"), value, 1, 100));
                if let (Some(key), Some(value)) = (key, value) {
                    options.insert(key.to_lowercase(), value);
                }
            }
        }
        if !combinations.insert(options.clone()) && raw.len() > 1 {
            errors.push(field("options"), "repeats the options of another variant");
        }
        if let Some(sku) = sku {
            variants.push(VariantInput {
                sku,
                options,
                price: variant.price,
                compare_at_price: variant.compare_at_price,
                weight_grams: variant.weight_grams,
            });
        }
    }
    variants
}

// ----- reviews ------------------------------------------------------------------------------

/// A valid review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewSpec {
    pub rating: i64,
    pub title: String,
    pub body: String,
}

impl ReviewSpec {
    pub fn parse(rating: i64, title: &str, body: &str) -> Result<Self, Vec<FieldError>> {
        let mut errors = Errors::default();
        if !(1..=5).contains(&rating) {
            errors.push("rating", "must be between 1 and 5");
        }
        let title = errors.take(text("title", title, 1, 120));
        let body = errors.take(text("body", body, 0, 5_000));
        errors.finish()?;
        match (title, body) {
            (Some(title), Some(body)) => Ok(Self { rating, title, body }),
            _ => Err(vec![FieldError::new("review", "is invalid")]),
        }
    }
}

/// The average rating × 100, rounded half up; 0 when there are no ratings.
pub fn rating_x100(sum: i64, count: i64) -> i64 {
    if count <= 0 {
        0
    } else {
        (sum * 100 * 2 + count) / (count * 2)
    }
}

/// What a moderation decision does to the product's rating totals: (Δsum, Δcount).
pub fn rating_delta(before: ReviewStatus, after: ReviewStatus, rating: i64) -> (i64, i64) {
    match (before == ReviewStatus::Approved, after == ReviewStatus::Approved) {
        (false, true) => (rating, 1),
        (true, false) => (-rating, -1),
        _ => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variant(sku: &str, price: i64) -> VariantInput {
        VariantInput {
            sku: sku.to_owned(),
            options: BTreeMap::new(),
            price,
            compare_at_price: None,
            weight_grams: None,
        }
    }

    fn draft() -> ProductDraft {
        ProductDraft {
            name: "Trail Runner 2".to_owned(),
            slug: None,
            description: "Light shoes.".to_owned(),
            brand: "Acme".to_owned(),
            category_id: Some(Uuid::nil()),
            status: ProductStatus::Draft,
            attributes: vec![],
            images: vec![],
            variants: vec![variant("TR-2", 5_000)],
        }
    }

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn slugs_are_derived_and_checked() {
        assert_eq!(
            Slug::from_name("Café & Crème — Deluxe!").unwrap().as_str(),
            "cafe-and-creme-deluxe"
        );
        assert_eq!(Slug::from_name("  ---  "), None);
        assert!(Slug::parse("s", "ok-slug-2").is_ok());
        for bad in [
            "",
            "Upper",
            "a--b",
            "-a",
            "a-",
            "a b",
            "ä",
            "0190f0f0-0000-7000-8000-000000000000",
        ] {
            assert!(Slug::parse("s", bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn a_valid_product_parses_with_its_price_range() {
        let mut d = draft();
        d.variants[0].options.insert("size".to_owned(), "M".to_owned());
        d.variants.push(variant("TR-2-XL", 6_500));
        d.variants[1].options.insert("Size".to_owned(), "XL".to_owned());
        let spec = ProductSpec::parse(d).unwrap();
        assert_eq!(spec.slug.as_str(), "trail-runner-2");
        assert_eq!((spec.price_min(), spec.price_max()), (5_000, 6_500));
    }

    #[test]
    fn every_invalid_field_is_reported_at_once() {
        let mut d = draft();
        d.name = " ".to_owned();
        d.brand = String::new();
        d.category_id = None;
        d.variants = vec![variant("A", -1), variant("a", 10), variant("bad sku", 5)];
        d.variants[1].compare_at_price = Some(10);
        d.images = vec![Image {
            url: "javascript:alert(1)".to_owned(),
            alt: String::new(),
        }];
        let errors = fields(ProductSpec::parse(d).unwrap_err());
        for expected in [
            "name",
            "brand",
            "category_id",
            "variants/0/price",
            "variants/1/sku",
            "variants/1/compare_at_price",
            "variants/2/sku",
            "images/0/url",
        ] {
            assert!(errors.iter().any(|f| f == expected), "missing {expected} in {errors:?}");
        }
    }

    #[test]
    fn a_product_needs_a_variant_and_distinct_options() {
        let mut d = draft();
        d.variants.clear();
        assert_eq!(fields(ProductSpec::parse(d).unwrap_err()), ["variants"]);
        let mut d = draft();
        d.variants = vec![variant("A", 1), variant("B", 2)];
        assert_eq!(fields(ProductSpec::parse(d).unwrap_err()), ["variants/1/options"]);
    }

    #[test]
    fn ratings_average_rounds_half_up() {
        assert_eq!(rating_x100(0, 0), 0);
        assert_eq!(rating_x100(5, 1), 500);
        assert_eq!(rating_x100(9, 2), 450);
        assert_eq!(rating_x100(13, 3), 433);
        assert_eq!(rating_x100(14, 3), 467);
    }

    #[test]
    fn moderation_moves_the_rating_only_across_approval() {
        use ReviewStatus::*;
        assert_eq!(rating_delta(Pending, Approved, 4), (4, 1));
        assert_eq!(rating_delta(Approved, Rejected, 4), (-4, -1));
        assert_eq!(rating_delta(Pending, Rejected, 4), (0, 0));
        assert_eq!(rating_delta(Approved, Approved, 4), (0, 0));
    }

    #[test]
    fn reviews_are_bounded() {
        assert!(ReviewSpec::parse(5, "Great", "").is_ok());
        assert_eq!(fields(ReviewSpec::parse(0, "", "x").unwrap_err()), ["rating", "title"]);
        assert!(ReviewSpec::parse(6, "t", "b").is_err());
    }

    #[test]
    fn category_paths_nest() {
        let root = category_path(None, "a");
        let child = category_path(Some(&root), "b");
        assert_eq!(child, "/a/b/");
        assert_eq!(path_ids(&child), ["a", "b"]);
    }
}
