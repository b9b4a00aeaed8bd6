"""context/languages: definitions from the grammar wheels' tags.scm, per language."""

from __future__ import annotations

import importlib.resources

import pytest
from tree_sitter import Language

from fimble.context.languages import (
    _GRAMMARS,
    FileSymbols,
    extract_symbols,
    language_for,
    language_id_for_path,
)

# One realistic file per language: imports, a class (or struct/module) with methods, a function.
SNIPPETS: dict[str, str] = {
    "python": '''\
import json
from pathlib import Path

MAX_SIZE = 1024


class Store:
    """Entries on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def decode(raw: bytes) -> dict:
        return json.loads(raw)


def open_store(root: str) -> Store:
    return Store(Path(root))
''',
    "javascript": '''\
import { readFile } from "node:fs/promises";
const path = require("node:path");

class Loader {
  constructor(root) {
    this.root = root;
  }

  async load(name) {
    const text = await readFile(path.join(this.root, name), "utf8");
    return parseConfig(text);
  }
}

function parseConfig(text) {
  return JSON.parse(text);
}

const makeLoader = (root) => new Loader(root);
''',
    "javascriptreact": '''\
import React from "react";

export function Greeting({ name }) {
  return <h1 className="title">{formatName(name)}</h1>;
}

const formatName = (name) => name.trim();
''',
    "typescript": '''\
import { EventEmitter } from "events";

export interface Shape {
  area(): number;
}

export class Circle implements Shape {
  constructor(private readonly radius: number) {}

  area(): number {
    return Math.PI * square(this.radius);
  }
}

function square(n: number): number {
  return n * n;
}
''',
    "typescriptreact": '''\
import React from "react";

interface ButtonProps {
  label: string;
}

export function Button(props: ButtonProps) {
  return <button onClick={() => track(props.label)}>{props.label}</button>;
}
''',
    "go": '''\
package store

import (
	"fmt"
	"os"
)

type Store struct {
	root string
}

func (s *Store) Path(name string) string {
	return fmt.Sprintf("%s/%s", s.root, name)
}

func Open(root string) (*Store, error) {
	if _, err := os.Stat(root); err != nil {
		return nil, err
	}
	return &Store{root: root}, nil
}
''',
    "rust": '''\
use std::collections::HashMap;

pub struct Cache {
    entries: HashMap<String, u64>,
}

impl Cache {
    pub fn new() -> Self {
        Cache { entries: HashMap::new() }
    }

    pub fn get(&self, key: &str) -> Option<u64> {
        self.entries.get(key).copied()
    }
}

pub fn warm(cache: &mut Cache) {
    println!("{:?}", cache.get("x"));
}
''',
    "java": '''\
package com.example.store;

import java.util.HashMap;
import java.util.Map;

public class Store implements AutoCloseable {
    private final Map<String, Long> entries = new HashMap<>();

    public long get(String key) {
        return entries.getOrDefault(key, 0L);
    }

    @Override
    public void close() {
        entries.clear();
    }
}
''',
    "c": '''\
#include <stdio.h>
#include "store.h"

struct entry {
    const char *key;
    long value;
};

static long lookup(const struct entry *entries, int count, const char *key) {
    for (int i = 0; i < count; i++) {
        if (strcmp(entries[i].key, key) == 0) return entries[i].value;
    }
    return -1;
}

int main(void) {
    printf("%ld\\n", lookup(NULL, 0, "x"));
    return 0;
}
''',
    "cpp": '''\
#include <string>
#include <vector>

namespace store {

class Cache {
public:
    explicit Cache(int capacity);
    int size() const { return items_.size(); }

private:
    std::vector<std::string> items_;
};

Cache::Cache(int capacity) { items_.reserve(capacity); }

}  // namespace store

int main() {
    store::Cache cache(4);
    return cache.size();
}
''',
    "ruby": '''\
require "json"

module Store
  class Cache < Base
    def initialize(root)
      @root = root
    end

    def self.open(root)
      new(root)
    end

    def fetch(key)
      JSON.parse(read(key))
    end
  end
end
''',
}

# (name, kind, signature line) of every definition, in document order.
EXPECTED_DEFINITIONS: dict[str, list[tuple[str, str, str]]] = {
    "python": [
        ("MAX_SIZE", "constant", "MAX_SIZE = 1024"),
        ("Store", "class", "class Store:"),
        ("__init__", "method", "def __init__(self, root: Path) -> None:"),
        ("decode", "method", "def decode(raw: bytes) -> dict:"),  # under a decorator
        ("open_store", "function", "def open_store(root: str) -> Store:"),
    ],
    "javascript": [
        ("Loader", "class", "class Loader {"),
        ("load", "method", "async load(name) {"),  # not the constructor: tags.scm's #not-eq? holds
        ("parseConfig", "function", "function parseConfig(text) {"),
        ("makeLoader", "function", "const makeLoader = (root) => new Loader(root);"),
    ],
    "javascriptreact": [
        ("Greeting", "function", "export function Greeting({ name }) {"),
        ("formatName", "function", "const formatName = (name) => name.trim();"),
    ],
    "typescript": [
        ("Shape", "interface", "export interface Shape {"),
        ("area", "method", "area(): number;"),
        ("Circle", "class", "export class Circle implements Shape {"),
        ("area", "method", "area(): number {"),
        ("square", "function", "function square(n: number): number {"),
    ],
    "typescriptreact": [
        ("ButtonProps", "interface", "interface ButtonProps {"),
        ("Button", "function", "export function Button(props: ButtonProps) {"),
    ],
    "go": [
        ("Store", "type", "type Store struct {"),
        ("Path", "method", "func (s *Store) Path(name string) string {"),
        ("Open", "function", "func Open(root string) (*Store, error) {"),
    ],
    "rust": [
        ("Cache", "class", "pub struct Cache {"),
        ("new", "method", "pub fn new() -> Self {"),  # a method, not also a function
        ("get", "method", "pub fn get(&self, key: &str) -> Option<u64> {"),
        ("warm", "function", "pub fn warm(cache: &mut Cache) {"),
    ],
    "java": [
        ("Store", "class", "public class Store implements AutoCloseable {"),
        ("get", "method", "public long get(String key) {"),
        ("close", "method", "public void close() {"),  # the @Override line above is skipped
    ],
    "c": [
        ("entry", "class", "struct entry {"),
        ("lookup", "function", "static long lookup(const struct entry *entries, int count, const char *key) {"),
        ("main", "function", "int main(void) {"),
    ],
    "cpp": [
        ("Cache", "class", "class Cache {"),
        ("Cache", "function", "explicit Cache(int capacity);"),
        ("size", "function", "int size() const { return items_.size(); }"),
        ("Cache", "method", "Cache::Cache(int capacity) { items_.reserve(capacity); }"),
        ("main", "function", "int main() {"),
    ],
    "ruby": [
        ("Store", "module", "module Store"),
        ("Cache", "class", "class Cache < Base"),
        ("initialize", "method", "def initialize(root)"),
        ("open", "method", "def self.open(root)"),
        ("fetch", "method", "def fetch(key)"),
    ],
}

def _symbols(language_id: str, text: str | None = None) -> FileSymbols:
    symbols = extract_symbols(SNIPPETS[language_id] if text is None else text, language_id)
    assert symbols is not None
    return symbols


@pytest.mark.parametrize("language_id", sorted(SNIPPETS))
def test_definitions_of_a_real_file(language_id: str) -> None:
    symbols = _symbols(language_id)
    assert symbols.language_id == language_id
    found = [(symbol.name, symbol.kind, symbol.signature) for symbol in symbols.definitions]
    assert found == EXPECTED_DEFINITIONS[language_id]


@pytest.mark.parametrize("module_name", sorted({module for module, _ in _GRAMMARS.values()}))
def test_every_grammar_wheel_loads_and_ships_tags_scm(module_name: str) -> None:
    # If a wheel stops shipping its tags.scm, its language silently loses every symbol; catch it.
    tags = importlib.resources.files(module_name) / "queries" / "tags.scm"
    assert "@definition." in tags.read_text(encoding="utf-8")
    language_ids = [language_id for language_id, (module, _) in _GRAMMARS.items() if module == module_name]
    assert all(isinstance(language_for(language_id), Language) for language_id in language_ids)


def test_a_definition_spans_the_whole_definition() -> None:
    # Retrieval cuts a definition out of the file by its range, so it must cover the body too.
    lines = SNIPPETS["python"].split("\n")
    store = next(symbol for symbol in _symbols("python").definitions if symbol.name == "Store")
    assert (store.start_line, store.start_column) == (6, 0)
    assert lines[store.end_line].strip() == "return json.loads(raw)"
    # C tags the declarator `lookup(...)`; the range is the whole function, return type to brace.
    lookup = next(symbol for symbol in _symbols("c").definitions if symbol.name == "lookup")
    assert (lookup.start_line, lookup.start_column, lookup.end_line, lookup.end_column) == (8, 0, 13, 1)


@pytest.mark.parametrize(
    ("path", "language_id"),
    [
        ("src/store.py", "python"),
        ("types/store.pyi", "python"),
        ("web/app.mjs", "javascript"),
        ("web/App.jsx", "javascriptreact"),
        ("web/app.ts", "typescript"),
        ("web/App.tsx", "typescriptreact"),
        ("cmd/main.go", "go"),
        ("src/lib.rs", "rust"),
        ("src/Main.java", "java"),
        ("src/store.c", "c"),
        ("include/store.h", "c"),
        ("src/Store.CPP", "cpp"),  # extensions are matched without case
        ("include/store.hpp", "cpp"),
        ("lib/store.rb", "ruby"),
    ],
)
def test_language_id_for_path_by_extension(path: str, language_id: str) -> None:
    assert language_id_for_path(path) == language_id


@pytest.mark.parametrize("path", ["README.md", "data.json", "Makefile", "notes.txt", ".env", "archive.tar.gz"])
def test_unknown_extensions_are_not_parsed(path: str) -> None:
    assert language_id_for_path(path) is None


@pytest.mark.parametrize("language_id", ["plaintext", "markdown", ""])
def test_a_language_without_a_grammar_gives_none(language_id: str) -> None:
    assert language_for(language_id) is None
    assert extract_symbols("int main(void) { return 0; }", language_id) is None


def test_a_file_with_syntax_errors_keeps_the_definitions_that_parse() -> None:
    text = (
        "def load(path):\n"
        "    return open(path).read()\n"
        "\n"
        "def broken(:\n"
        "    return\n"
        "\n"
        "class Store:\n"
        "    def save(self, data):\n"
        "        write(data)\n"
    )
    symbols = _symbols("python", text)
    names = [symbol.name for symbol in symbols.definitions]
    assert "load" in names and "Store" in names and "save" in names


def test_a_typescript_file_cut_off_mid_class_keeps_what_parses() -> None:
    head = "export function total(xs: number[]): number {\n  return sum(xs);\n}\n\nclass Cart {\n  add(item: Item) {\n"
    # A class left open at the end of the file is lost; the function before it is kept.
    assert [symbol.name for symbol in _symbols("typescript", head).definitions] == ["total"]
    # An unclosed call inside a method costs nothing: tree-sitter recovers at the next brace.
    text = head + "    return this.items.push(item\n  }\n}\n"
    found = [(symbol.name, symbol.kind) for symbol in _symbols("typescript", text).definitions]
    assert found == [("total", "function"), ("Cart", "class"), ("add", "method")]


def test_columns_count_code_points_not_bytes() -> None:
    text = "def größe(wert):\n    return maß(wert)  # ü\n"
    symbols = _symbols("python", text)
    (definition,) = symbols.definitions
    assert (definition.name, definition.signature) == ("größe", "def größe(wert):")
    # The definition ends after the comment `# ü`, at code point 25 (byte 27).
    assert (definition.end_line, definition.end_column) == (1, 25)


def test_columns_count_code_points_in_go_identifiers() -> None:
    text = 'package main\n\nfunc 計算(x int) int { return 倍(x) }\n'
    symbols = _symbols("go", text)
    (definition,) = [symbol for symbol in symbols.definitions if symbol.kind == "function"]
    # The function ends after its closing brace: code point 34 (byte 40).
    assert (definition.name, definition.start_column, definition.end_column) == ("計算", 0, 34)
