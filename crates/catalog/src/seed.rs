//! Demo data: a deterministic catalog generator. The same product number always yields the
//! same product (id, name, brand, prices, variants), so seeding is repeatable and can be
//! extended: `seed(n)` on a catalog that already holds `k` seeded products adds numbers `k..n`.
//!
//! Ratings of seeded products are synthetic aggregates (there are no review rows behind them);
//! seeded products are marked in stock so the demo shop can sell before stock is entered.

use std::collections::HashMap;
use std::time::Instant;

use platform::events::Event;
use platform::outbox;
use platform::store::Db;
use serde_json::json;
use uuid::Uuid;

use crate::domain::{category_path, Attribute, Image, Slug};
use crate::service::{brand_key, SERVICE};
use crate::store::{self, CategoryRow, ProductRow, VariantRow};

/// The owner of seeded products: a fixed id no account has; admins manage them.
pub const DEMO_SELLER: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
/// Seeded products are created one minute apart from this instant (2026-01-01T00:00:00Z).
const BASE_TIME_MS: i64 = 1_767_225_600_000;
const BATCH: usize = 500;

/// SplitMix64: tiny, fast, and the same on every platform and version.
struct Rng(u64);

impl Rng {
    fn for_item(stream: u64, index: u64) -> Self {
        let mut rng = Self(stream ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        rng.next();
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn uuid_v7(&mut self, unix_ms: i64) -> Uuid {
        let random: [u8; 10] = {
            let a = self.next().to_le_bytes();
            let b = self.next().to_le_bytes();
            [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1]]
        };
        uuid::Builder::from_unix_timestamp_millis(unix_ms.max(0) as u64, &random).into_uuid()
    }
}

/// A subcategory: its name, its leaf categories and the nouns of its products.
type Subcategory = (&'static str, &'static [&'static str], &'static [&'static str]);

/// The demo tree: departments and their subcategories.
const TREE: &[(&str, &[Subcategory])] = &[
    (
        "Electronics",
        &[
            (
                "Audio",
                &["Headphones", "Speakers", "Earbuds"],
                &["Headphones", "Speaker", "Earbuds", "Soundbar", "Amplifier"],
            ),
            (
                "Computers",
                &["Laptops", "Monitors", "Keyboards"],
                &["Laptop", "Monitor", "Keyboard", "Mouse", "Docking Station"],
            ),
            (
                "Phones",
                &["Smartphones", "Cases", "Chargers"],
                &["Smartphone", "Phone Case", "Charger", "Power Bank", "Cable"],
            ),
            (
                "Cameras",
                &["Mirrorless", "Action Cameras", "Lenses"],
                &["Camera", "Lens", "Tripod", "Action Camera", "Flash"],
            ),
        ],
    ),
    (
        "Fashion",
        &[
            (
                "Men",
                &["Shirts", "Trousers", "Jackets"],
                &["Shirt", "Trousers", "Jacket", "Polo", "Chinos"],
            ),
            (
                "Women",
                &["Dresses", "Tops", "Skirts"],
                &["Dress", "Blouse", "Skirt", "Cardigan", "Top"],
            ),
            (
                "Shoes",
                &["Sneakers", "Boots", "Sandals"],
                &["Sneakers", "Boots", "Sandals", "Loafers", "Running Shoes"],
            ),
            (
                "Accessories",
                &["Bags", "Watches", "Sunglasses"],
                &["Backpack", "Watch", "Sunglasses", "Wallet", "Belt"],
            ),
        ],
    ),
    (
        "Home & Kitchen",
        &[
            (
                "Cookware",
                &["Pans", "Pots", "Knives"],
                &["Frying Pan", "Saucepan", "Chef Knife", "Dutch Oven", "Wok"],
            ),
            (
                "Furniture",
                &["Chairs", "Tables", "Shelves"],
                &["Chair", "Table", "Bookshelf", "Stool", "Desk"],
            ),
            (
                "Bedding",
                &["Sheets", "Pillows", "Duvets"],
                &["Sheet Set", "Pillow", "Duvet", "Blanket", "Mattress Topper"],
            ),
            (
                "Appliances",
                &["Coffee Makers", "Blenders", "Kettles"],
                &["Coffee Maker", "Blender", "Kettle", "Toaster", "Air Fryer"],
            ),
        ],
    ),
    (
        "Sports & Outdoors",
        &[
            (
                "Fitness",
                &["Yoga", "Weights", "Cardio"],
                &[
                    "Yoga Mat",
                    "Dumbbell Set",
                    "Kettlebell",
                    "Jump Rope",
                    "Resistance Bands",
                ],
            ),
            (
                "Camping",
                &["Tents", "Sleeping Bags", "Stoves"],
                &["Tent", "Sleeping Bag", "Camping Stove", "Lantern", "Cooler"],
            ),
            (
                "Cycling",
                &["Bikes", "Helmets", "Lights"],
                &["Bike Helmet", "Bike Light", "Cycling Gloves", "Bike Lock", "Saddle"],
            ),
        ],
    ),
    (
        "Beauty",
        &[
            (
                "Skincare",
                &["Moisturizers", "Cleansers", "Serums"],
                &["Moisturizer", "Cleanser", "Serum", "Face Mask", "Sunscreen"],
            ),
            (
                "Hair",
                &["Shampoo", "Styling", "Tools"],
                &["Shampoo", "Conditioner", "Hair Dryer", "Hair Straightener", "Hair Oil"],
            ),
        ],
    ),
    (
        "Books & Media",
        &[
            (
                "Books",
                &["Fiction", "Cookbooks", "Science"],
                &["Novel", "Cookbook", "Field Guide", "Atlas", "Anthology"],
            ),
            (
                "Music",
                &["Vinyl", "Instruments", "Accessories"],
                &[
                    "Vinyl Record",
                    "Acoustic Guitar",
                    "Ukulele",
                    "Guitar Strings",
                    "Metronome",
                ],
            ),
        ],
    ),
];

const BRANDS: &[&str] = &[
    "Acme",
    "Northwind",
    "Lumen",
    "Solace",
    "Vertex",
    "Halden",
    "Oakridge",
    "Brightline",
    "Kestrel",
    "Marlow",
    "Nimbus",
    "Pellucid",
    "Quorra",
    "Riverstone",
    "Sable",
    "Tessera",
    "Umbra",
    "Vantage",
    "Wildgrove",
    "Zenith",
    "Aurora",
    "Bramble",
    "Cobalt",
    "Driftwood",
    "Ember",
    "Fathom",
    "Granite",
    "Harbor",
    "Ironbark",
    "Juniper",
];
/// A leaf category with the words its products are named with.
struct Leaf {
    row: CategoryRow,
    nouns: &'static [&'static str],
    adjectives: &'static [&'static str],
}

/// Adjectives that fit each department of `TREE`, in order (a "Wireless Shirt" helps nobody).
const DEPARTMENT_ADJECTIVES: [&[&str]; 6] = [
    &[
        "Wireless",
        "Compact",
        "Smart",
        "Pro",
        "Portable",
        "Ultra",
        "Noise-Cancelling",
        "Digital",
    ],
    &[
        "Classic", "Slim", "Vintage", "Everyday", "Heritage", "Organic", "Relaxed", "Tailored",
    ],
    &[
        "Essential",
        "Deluxe",
        "Modern",
        "Rustic",
        "Ergonomic",
        "Stackable",
        "Premium",
        "Eco",
    ],
    &[
        "Rugged",
        "Ultralight",
        "Pro",
        "Waterproof",
        "Compact",
        "Trail",
        "All-Season",
        "Foldable",
    ],
    &[
        "Gentle",
        "Hydrating",
        "Organic",
        "Daily",
        "Clarifying",
        "Nourishing",
        "Sensitive",
        "Professional",
    ],
    &[
        "Illustrated",
        "Collector's",
        "Pocket",
        "Complete",
        "Deluxe",
        "Vintage",
        "Beginner's",
        "Signature",
    ],
];

const ADJECTIVES: &[&str] = &[
    "Classic",
    "Premium",
    "Compact",
    "Wireless",
    "Ultralight",
    "Heritage",
    "Everyday",
    "Pro",
    "Eco",
    "Deluxe",
    "Vintage",
    "Smart",
    "Rugged",
    "Slim",
    "Essential",
    "Signature",
    "Modern",
    "Portable",
    "Ergonomic",
    "Luxe",
];
const MATERIALS: &[&str] = &[
    "Cotton",
    "Leather",
    "Bamboo",
    "Steel",
    "Walnut",
    "Wool",
    "Linen",
    "Carbon",
    "Ceramic",
    "Aluminium",
];
const COLOURS: &[&str] = &["Black", "White", "Navy", "Olive", "Red", "Grey", "Sand", "Teal"];
const SIZES: &[&str] = &["S", "M", "L", "XL"];
const FEATURES: &[&str] = &[
    "built to last",
    "designed for daily use",
    "easy to clean",
    "backed by a two-year warranty",
    "made from responsibly sourced materials",
    "tested by our own team",
    "a favourite of our customers",
    "light enough to take anywhere",
    "quiet and efficient",
    "finished by hand",
];

/// What a seeding run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedReport {
    pub categories: usize,
    pub products: usize,
    pub variants: usize,
    pub elapsed_ms: u128,
}

/// The leaf categories with the nouns of their products, creating the demo tree if missing.
async fn ensure_tree(db: &Db, now: i64) -> anyhow::Result<(Vec<Leaf>, usize)> {
    let existing: HashMap<String, CategoryRow> = store::all_categories(db.reader())
        .await?
        .into_iter()
        .map(|c| (c.slug.clone(), c))
        .collect();
    let mut tx = db.begin().await?;
    let mut created = 0;
    let mut leaves = Vec::new();
    let mut rng = Rng::for_item(0xCA7E_6021, 0);
    let mut ensure = |name: &str, parent: Option<&CategoryRow>, position: i64| {
        let slug = match parent {
            Some(parent) => format!(
                "{}-{}",
                parent.slug,
                Slug::from_name(name).map(Slug::into_string).unwrap_or_default()
            ),
            None => Slug::from_name(name).map(Slug::into_string).unwrap_or_default(),
        };
        let id = rng.uuid_v7(BASE_TIME_MS).to_string();
        match existing.get(&slug) {
            Some(row) => (row.clone(), false),
            None => (
                CategoryRow {
                    path: category_path(parent.map(|p| p.path.as_str()), &id),
                    id,
                    parent_id: parent.map(|p| p.id.clone()),
                    name: name.to_owned(),
                    slug,
                    position,
                    created_at: now,
                    updated_at: now,
                    version: 1,
                },
                true,
            ),
        }
    };
    for (d, (department, subs)) in TREE.iter().enumerate() {
        let (top, new) = ensure(department, None, d as i64);
        if new {
            store::insert_category(&mut tx, &top).await?;
            created += 1;
        }
        for (s, (sub, leaf_names, nouns)) in subs.iter().enumerate() {
            let (middle, new) = ensure(sub, Some(&top), s as i64);
            if new {
                store::insert_category(&mut tx, &middle).await?;
                created += 1;
            }
            for (l, leaf) in leaf_names.iter().enumerate() {
                let (row, new) = ensure(leaf, Some(&middle), l as i64);
                if new {
                    store::insert_category(&mut tx, &row).await?;
                    created += 1;
                }
                leaves.push(Leaf {
                    row,
                    nouns,
                    adjectives: DEPARTMENT_ADJECTIVES.get(d).copied().unwrap_or(ADJECTIVES),
                });
            }
        }
    }
    tx.commit().await?;
    Ok((leaves, created))
}

/// One generated product with its variants.
fn product(index: u64, leaves: &[Leaf]) -> (ProductRow, Vec<VariantRow>) {
    let mut rng = Rng::for_item(0x5EED_0000_0000_0001, index);
    let created_at = BASE_TIME_MS + index as i64 * 60_000;
    let id = rng.uuid_v7(created_at).to_string();
    let leaf = &leaves[rng.below(leaves.len() as u64) as usize];
    let category = &leaf.row;
    let noun = rng.pick(leaf.nouns);
    let adjective = rng.pick(leaf.adjectives);
    let material = rng.pick(MATERIALS);
    let brand = *rng.pick(BRANDS);
    let name = if rng.below(2) == 0 {
        format!("{adjective} {noun}")
    } else {
        format!("{adjective} {material} {noun}")
    };
    let slug = format!(
        "{}-{}",
        Slug::from_name(&format!("{brand} {name}"))
            .map(Slug::into_string)
            .unwrap_or_default(),
        index + 1
    );
    let description = format!(
        "The {brand} {name} is {}. {} and {}.",
        rng.pick(FEATURES),
        capitalize(rng.pick::<&str>(FEATURES)),
        rng.pick(FEATURES)
    );
    // Prices from 4.99 to about 1,500.00, ending in .99 or .00.
    let major = match rng.below(10) {
        0..=3 => 4 + rng.below(30),
        4..=6 => 30 + rng.below(120),
        7..=8 => 150 + rng.below(350),
        _ => 500 + rng.below(1_000),
    } as i64;
    let base_price = major * 100 + if rng.below(2) == 0 { 99 } else { 0 };
    let variant_count = 1 + rng.below(4) as usize;
    let by_size = rng.below(2) == 0;
    let mut variants = Vec::with_capacity(variant_count);
    for v in 0..variant_count {
        let mut options = serde_json::Map::new();
        if by_size {
            options.insert("size".to_owned(), json!(SIZES[v % SIZES.len()]));
        } else {
            options.insert(
                "colour".to_owned(),
                json!(COLOURS[(index as usize + v) % COLOURS.len()]),
            );
        }
        let price = base_price + v as i64 * 500;
        variants.push(VariantRow {
            id: rng.uuid_v7(created_at).to_string(),
            product_id: id.clone(),
            sku: format!("MC-{:07}-{}", index + 1, v + 1),
            options: serde_json::Value::Object(options).to_string(),
            price,
            compare_at_price: (rng.below(4) == 0).then_some(price + price / 5),
            weight_grams: Some(100 + rng.below(5_000) as i64),
            position: v as i64,
            in_stock: 1,
        });
    }
    let rating_count = if rng.below(5) == 0 {
        0
    } else {
        rng.below(250) as i64 + 1
    };
    // Averages between 3.0 and 5.0.
    let rating_sum = rating_count * 3 + rng.below(rating_count as u64 * 2 + 1) as i64;
    let images = vec![
        Image {
            url: format!("https://placehold.co/800x800/png?text={}", slug.replace('-', "+")),
            alt: format!("{brand} {name}"),
        },
        Image {
            url: format!(
                "https://placehold.co/800x800/png?text={}+detail",
                slug.replace('-', "+")
            ),
            alt: format!("{brand} {name}, detail"),
        },
    ];
    let attributes = vec![
        Attribute {
            name: "Material".to_owned(),
            value: (*material).to_owned(),
        },
        Attribute {
            name: "Warranty".to_owned(),
            value: format!("{} years", 1 + rng.below(3)),
        },
    ];
    let row = ProductRow {
        id,
        slug,
        name,
        description,
        brand: brand.to_owned(),
        brand_key: brand_key(brand),
        category_id: category.id.clone(),
        seller_id: DEMO_SELLER.to_string(),
        status: "active".to_owned(),
        attributes: serde_json::to_string(&attributes).unwrap_or_else(|_| "[]".to_owned()),
        images: serde_json::to_string(&images).unwrap_or_else(|_| "[]".to_owned()),
        price_min: variants.iter().map(|v| v.price).min().unwrap_or(base_price),
        price_max: variants.iter().map(|v| v.price).max().unwrap_or(base_price),
        rating_sum,
        rating_count,
        rating_x100: crate::domain::rating_x100(rating_sum, rating_count),
        in_stock: 1,
        seq: 0,
        created_at,
        updated_at: created_at,
        deleted_at: None,
        version: 1,
    };
    (row, variants)
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// Seeds until the catalog holds `total` seeded products (adding the missing numbers), with a
/// product.created event for each, in batches of one transaction.
pub async fn seed(db: &Db, total: usize, now: i64) -> anyhow::Result<SeedReport> {
    let started = Instant::now();
    let (leaves, categories) = ensure_tree(db, now).await?;
    let already: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM products WHERE seller_id = $1")
        .bind(DEMO_SELLER.to_string())
        .fetch_one(db.reader())
        .await?;
    let from = usize::try_from(already).unwrap_or(0);
    let mut variants_written = 0;
    let mut index = from;
    while index < total {
        let end = (index + BATCH).min(total);
        let mut tx = db.begin().await?;
        let seq = store::next_seq(&mut tx).await?;
        for i in index..end {
            let (mut row, variants) = product(i as u64, &leaves);
            row.seq = seq;
            store::insert_product(&mut tx, &row).await?;
            for variant in &variants {
                store::upsert_variant(&mut tx, variant).await?;
            }
            variants_written += variants.len();
            let event = Event::new(
                SERVICE,
                "product.created",
                &row.id,
                json!({
                    "product_id": row.id, "slug": row.slug, "name": row.name, "status": row.status,
                    "seller_id": row.seller_id, "category_id": row.category_id, "seq": seq, "version": 1,
                    "variants": variants.iter().map(|v| json!({"sku": v.sku, "price": v.price,
                        "compare_at_price": v.compare_at_price})).collect::<Vec<_>>(),
                }),
                None,
            );
            outbox::enqueue(&mut tx, &event).await?;
        }
        tx.commit().await?;
        index = end;
    }
    Ok(SeedReport {
        categories,
        products: total.saturating_sub(from),
        variants: variants_written,
        elapsed_ms: started.elapsed().as_millis(),
    })
}

/// Every SKU of the demo products with its product id, for seeding their stock.
pub async fn demo_skus(db: &Db) -> anyhow::Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT v.sku, v.product_id FROM variants v JOIN products p ON p.id = v.product_id
         WHERE p.seller_id = $1 AND p.deleted_at IS NULL ORDER BY v.sku",
    )
    .bind(DEMO_SELLER.to_string())
    .fetch_all(db.reader())
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves() -> Vec<Leaf> {
        vec![Leaf {
            row: CategoryRow {
                id: "c".to_owned(),
                parent_id: None,
                name: "Leaf".to_owned(),
                slug: "leaf".to_owned(),
                path: "/c/".to_owned(),
                position: 0,
                created_at: 0,
                updated_at: 0,
                version: 1,
            },
            nouns: &["Widget"],
            adjectives: ADJECTIVES,
        }]
    }

    #[test]
    fn the_same_number_yields_the_same_product() {
        let (a, va) = product(41, &leaves());
        let (b, vb) = product(41, &leaves());
        assert_eq!(a, b);
        assert_eq!(va, vb);
        let (c, _) = product(42, &leaves());
        assert_ne!(a.id, c.id);
        assert_ne!(a.slug, c.slug);
    }

    #[test]
    fn generated_products_are_valid() {
        for i in 0..500 {
            let (row, variants) = product(i, &leaves());
            assert!((1..=4).contains(&variants.len()));
            assert!(variants
                .iter()
                .all(|v| v.price > 0 && v.compare_at_price.is_none_or(|c| c > v.price)));
            assert_eq!(row.price_min, variants.iter().map(|v| v.price).min().unwrap());
            assert!((0..=500).contains(&row.rating_x100));
            assert!(row.rating_count == 0 || row.rating_x100 >= 100);
            assert!(Slug::parse("slug", &row.slug).is_ok(), "{}", row.slug);
        }
    }

    #[test]
    fn the_tree_is_three_levels_deep() {
        assert!(TREE
            .iter()
            .all(|(_, subs)| subs.iter().all(|(_, leaves, _)| !leaves.is_empty())));
        assert_eq!(
            DEPARTMENT_ADJECTIVES.len(),
            TREE.len(),
            "adjectives for every department"
        );
    }
}
