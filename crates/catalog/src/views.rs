//! What the catalog answers: products, categories and reviews as clients see them, built from
//! store rows.

use std::collections::BTreeMap;

use platform::clock::rfc3339;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::{Attribute, Image, ProductStatus, ReviewStatus};
use crate::store::{CategoryRow, ProductRow, ReviewRow, VariantRow};

/// A product page: everything about one product.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProductView {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub description: String,
    pub brand: String,
    pub category: CategoryRef,
    pub seller_id: String,
    pub status: ProductStatus,
    pub attributes: Vec<Attribute>,
    pub images: Vec<Image>,
    pub variants: Vec<VariantView>,
    pub price: PriceRange,
    pub rating: RatingSummary,
    /// Any variant in stock.
    pub in_stock: bool,
    pub created_at: String,
    pub updated_at: String,
    /// Send it back with an edit; a stale version is refused with 409.
    pub version: i64,
}

/// A product in a list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProductSummary {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub brand: String,
    pub category_id: String,
    pub status: ProductStatus,
    /// The first image.
    pub image: Option<Image>,
    pub price: PriceRange,
    pub rating: RatingSummary,
    pub in_stock: bool,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VariantView {
    pub id: String,
    pub sku: String,
    pub options: BTreeMap<String, String>,
    /// Minor units of the shop currency.
    pub price: i64,
    pub compare_at_price: Option<i64>,
    pub weight_grams: Option<i64>,
    pub in_stock: bool,
}

/// The lowest and highest variant price, in minor units.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PriceRange {
    pub currency: String,
    pub min: i64,
    pub max: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RatingSummary {
    /// The average of approved reviews, two decimals; 0 when there are none.
    pub average: f64,
    pub count: i64,
}

/// A product's category with its path from the root (breadcrumbs).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CategoryRef {
    pub id: String,
    pub name: String,
    pub slug: String,
    /// Root first, this category last.
    pub path: Vec<CategoryCrumb>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CategoryCrumb {
    pub id: String,
    pub name: String,
    pub slug: String,
}

/// A category and everything below it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CategoryNode {
    pub id: String,
    pub parent_id: Option<String>,
    pub name: String,
    pub slug: String,
    pub position: i64,
    pub version: i64,
    #[schema(no_recursion)]
    pub children: Vec<CategoryNode>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CategoryView {
    pub id: String,
    pub parent_id: Option<String>,
    pub name: String,
    pub slug: String,
    pub position: i64,
    pub path: Vec<CategoryCrumb>,
    pub version: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReviewView {
    pub id: String,
    pub product_id: String,
    pub author_name: String,
    pub rating: i64,
    pub title: String,
    pub body: String,
    /// The author received this product in a delivered order.
    pub verified_buyer: bool,
    pub status: ReviewStatus,
    /// The moderator's note; shown to the author and admins only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moderation_note: Option<String>,
    pub created_at: String,
}

/// A wishlist entry: when it was added and the product as it is now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WishlistItem {
    pub added_at: String,
    pub product: ProductSummary,
}

pub fn rating(row: &ProductRow) -> RatingSummary {
    RatingSummary {
        average: row.rating_x100 as f64 / 100.0,
        count: row.rating_count,
    }
}

fn status(raw: &str) -> ProductStatus {
    ProductStatus::parse(raw).unwrap_or(ProductStatus::Draft)
}

pub fn summary(row: &ProductRow, currency: &str) -> ProductSummary {
    let images: Vec<Image> = serde_json::from_str(&row.images).unwrap_or_default();
    ProductSummary {
        id: row.id.clone(),
        slug: row.slug.clone(),
        name: row.name.clone(),
        brand: row.brand.clone(),
        category_id: row.category_id.clone(),
        status: status(&row.status),
        image: images.into_iter().next(),
        price: PriceRange {
            currency: currency.to_owned(),
            min: row.price_min,
            max: row.price_max,
        },
        rating: rating(row),
        in_stock: row.in_stock != 0,
        created_at: rfc3339(row.created_at),
    }
}

pub fn crumb(row: &CategoryRow) -> CategoryCrumb {
    CategoryCrumb {
        id: row.id.clone(),
        name: row.name.clone(),
        slug: row.slug.clone(),
    }
}

pub fn variant(row: VariantRow) -> VariantView {
    VariantView {
        id: row.id,
        sku: row.sku,
        options: serde_json::from_str(&row.options).unwrap_or_default(),
        price: row.price,
        compare_at_price: row.compare_at_price,
        weight_grams: row.weight_grams,
        in_stock: row.in_stock != 0,
    }
}

/// `path` is the product's category and its ancestors, root first.
pub fn product(row: ProductRow, variants: Vec<VariantRow>, path: &[CategoryRow], currency: &str) -> ProductView {
    let own = path.last();
    ProductView {
        category: CategoryRef {
            id: row.category_id.clone(),
            name: own.map(|c| c.name.clone()).unwrap_or_default(),
            slug: own.map(|c| c.slug.clone()).unwrap_or_default(),
            path: path.iter().map(crumb).collect(),
        },
        price: PriceRange {
            currency: currency.to_owned(),
            min: row.price_min,
            max: row.price_max,
        },
        rating: rating(&row),
        status: status(&row.status),
        attributes: serde_json::from_str(&row.attributes).unwrap_or_default(),
        images: serde_json::from_str(&row.images).unwrap_or_default(),
        variants: variants.into_iter().map(variant).collect(),
        in_stock: row.in_stock != 0,
        created_at: rfc3339(row.created_at),
        updated_at: rfc3339(row.updated_at),
        id: row.id,
        slug: row.slug,
        name: row.name,
        description: row.description,
        brand: row.brand,
        seller_id: row.seller_id,
        version: row.version,
    }
}

/// `with_note`: the caller is the author or an admin.
pub fn review(row: ReviewRow, with_note: bool) -> ReviewView {
    ReviewView {
        status: ReviewStatus::parse(&row.status).unwrap_or(ReviewStatus::Pending),
        verified_buyer: row.verified_buyer != 0,
        created_at: rfc3339(row.created_at),
        moderation_note: row.moderation_note.filter(|_| with_note),
        id: row.id,
        product_id: row.product_id,
        author_name: row.author_name,
        rating: row.rating,
        title: row.title,
        body: row.body,
    }
}

pub fn category(row: &CategoryRow, path: &[CategoryRow]) -> CategoryView {
    CategoryView {
        id: row.id.clone(),
        parent_id: row.parent_id.clone(),
        name: row.name.clone(),
        slug: row.slug.clone(),
        position: row.position,
        path: path.iter().map(crumb).collect(),
        version: row.version,
    }
}

/// Nests categories (ordered by position, name) into trees.
pub fn tree(rows: &[CategoryRow]) -> Vec<CategoryNode> {
    fn children_of(parent: Option<&str>, rows: &[CategoryRow], depth: usize) -> Vec<CategoryNode> {
        if depth > 64 {
            return Vec::new();
        }
        rows.iter()
            .filter(|r| r.parent_id.as_deref() == parent)
            .map(|r| CategoryNode {
                id: r.id.clone(),
                parent_id: r.parent_id.clone(),
                name: r.name.clone(),
                slug: r.slug.clone(),
                position: r.position,
                version: r.version,
                children: children_of(Some(&r.id), rows, depth + 1),
            })
            .collect()
    }
    children_of(None, rows, 0)
}
