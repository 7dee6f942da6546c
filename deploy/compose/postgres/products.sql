-- The products example's table (examples/products/sluice.yaml), made once when the database
-- is initialised. sluice-producer creates the publication and the slot itself.
CREATE TABLE products (
  id bigint PRIMARY KEY,
  name text NOT NULL,
  description text,
  price numeric(10, 2),
  in_stock boolean NOT NULL DEFAULT true,
  supplier_cost numeric(10, 2)
);
