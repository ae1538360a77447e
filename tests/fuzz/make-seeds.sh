#!/bin/sh
# Makes the seed corpora of the ingest/ fuzz targets (tests/fuzz/corpus/*)
# with real tools: ghostscript (PDF), qpdf (encrypted PDF), zip, bsdtar, 7z,
# cpio, ar, gzip, zstd, xz, lz4, iconv. The seeds are committed so CI needs
# none of these tools; run this again only to change them. Every seed is
# small (the fuzzer and the replay test read each one per run).
set -eu
out=$(cd "$(dirname "$0")" && pwd)/corpus
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
for t in text pdf archive html xml docx odt epub auto gitignore; do mkdir -p "$out/$t"; done

# text
printf 'plain ascii\nsecond line\n' > "$out/text/ascii.txt"
printf '\357\273\277bom utf-8 caf\303\251\r\nCRLF\r\n' > "$out/text/bom-crlf.txt"
printf '\377\376h\000i\000\r\000\n\000=\330\000\336' > "$out/text/utf16le.txt"
printf '\376\377\000h\000i\330=\336\000' > "$out/text/utf16be.txt"
printf 'caf\303\251 \342\202\254 na\303\257ve\n' | iconv -f UTF-8 -t WINDOWS-1252 > "$out/text/cp1252.txt"
printf 'mostly \303\251 utf8 \377 broken \300\200 overlong\n' > "$out/text/mixed.txt"

# pdf: ghostscript writes a two-page PDF with metadata; qpdf encrypts copies
cat > doc.ps <<'PS'
[ /Title (Seed Title) /Author (Seed Author) /DOCINFO pdfmark
/Helvetica findfont 14 scalefont setfont
72 720 moveto (Page one: the supplier delivers.) show showpage
72 720 moveto (Page two: liability is capped.) show showpage
showpage
PS
gs -q -dNOPAUSE -dBATCH -sDEVICE=pdfwrite -dCompressPages=false -sOutputFile="$out/pdf/two-pages.pdf" doc.ps
qpdf --encrypt '' owner 256 -- "$out/pdf/two-pages.pdf" "$out/pdf/empty-user-password.pdf"
qpdf --encrypt user owner 256 -- "$out/pdf/two-pages.pdf" "$out/pdf/password.pdf"
head -c 900 "$out/pdf/two-pages.pdf" > "$out/pdf/truncated.pdf"

# archives
mkdir -p src/sub
printf 'alpha\n' > src/a.txt
printf 'beta\n' > src/sub/b.md
cp "$out/pdf/two-pages.pdf" src/sub/c.pdf
(cd src && zip -q -r "$tmp/s.zip" a.txt sub/b.md)
(cd src && bsdtar -czf "$out/archive/s.tar.gz" a.txt sub/b.md)
(cd src && bsdtar -cJf "$out/archive/s.tar.xz" a.txt sub/b.md)
(cd src && bsdtar --zstd -cf "$out/archive/s.tar.zst" a.txt sub/b.md)
(cd src && bsdtar -cf - a.txt | lz4 -q > "$out/archive/s.tar.lz4")
(cd src && bsdtar -cjf "$out/archive/s.tar.bz2" a.txt)
(cd src && 7z a -bd -bso0 "$out/archive/s.7z" a.txt sub/b.md)
(cd src && find a.txt sub | cpio -o -H newc --quiet > "$out/archive/s.cpio")
(cd src && ar rc "$out/archive/s.a" a.txt sub/b.md)
gzip -c src/a.txt > "$out/archive/a.txt.gz"
(cd src && zip -q -P secret "$out/archive/encrypted.zip" a.txt)
cp s.zip "$out/archive/s.zip"
(cd src && zip -q "$tmp/inner.zip" a.txt) && bsdtar -czf mid.tgz inner.zip && zip -q "$out/archive/nested.zip" mid.tgz
(cd src && ln -s /etc/passwd link && bsdtar -cf "$out/archive/link.tar" link a.txt)

# markup
printf '<!DOCTYPE html><html><head><title>T</title><script>x()</script></head><body><h1>H</h1><p>a <b>b</b></p><ul><li>i</li></ul><table><tr><td>c</td></tr></table><pre> p  q</pre></body></html>' > "$out/html/page.html"
printf '<html><meta charset="iso-8859-1"><p>caf\351<br>x</p>' > "$out/html/latin1.html"
printf '<?xml version="1.0"?><r><a>one</a><b x="1">two <![CDATA[three]]></b></r>' > "$out/xml/plain.xml"
printf '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd"><!ENTITY y "yy">]><r>&x; &y;</r>' > "$out/xml/entities.xml"
printf '<?xml version="1.0"?><r><a>unclosed</r>' > "$out/xml/malformed.xml"

# containers: hand-written parts zipped by the zip tool
W='xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
mkdir -p dx/word dx/docProps
printf '<?xml version="1.0"?><w:document %s><w:body><w:p><w:r><w:t>Para</w:t><w:tab/><w:t>x</w:t><w:br/></w:r></w:p><w:tbl><w:tr><w:tc><w:p><w:r><w:t>cell</w:t></w:r></w:p></w:tc></w:tr></w:tbl></w:body></w:document>' "$W" > dx/word/document.xml
printf '<?xml version="1.0"?><w:hdr %s><w:p><w:r><w:t>Header</w:t></w:r></w:p></w:hdr>' "$W" > dx/word/header1.xml
printf '<?xml version="1.0"?><cp:coreProperties xmlns:cp="x" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>T</dc:title><dc:creator>C</dc:creator></cp:coreProperties>' > dx/docProps/core.xml
(cd dx && zip -q -X -r "$out/docx/doc.docx" word docProps)
mkdir -p od
printf 'application/vnd.oasis.opendocument.text' > od/mimetype
printf '<?xml version="1.0"?><office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0"><office:body><office:text><text:h>H</text:h><text:p>a<text:s text:c="3"/>b<text:tab/>c<text:line-break/>d</text:p></office:text></office:body></office:document-content>' > od/content.xml
(cd od && zip -q -X -0 "$out/odt/doc.odt" mimetype && zip -q -X "$out/odt/doc.odt" content.xml)
mkdir -p ep/META-INF ep/OEBPS
printf 'application/epub+zip' > ep/mimetype
printf '<?xml version="1.0"?><container><rootfiles><rootfile full-path="OEBPS/p.opf"/></rootfiles></container>' > ep/META-INF/container.xml
printf '<?xml version="1.0"?><package><metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>B</dc:title></metadata><manifest><item id="a" href="a.xhtml"/><item id="b" href="../OEBPS/b.xhtml"/></manifest><spine><itemref idref="b"/><itemref idref="a"/></spine></package>' > ep/OEBPS/p.opf
printf '<html><body><p>chapter a</p></body></html>' > ep/OEBPS/a.xhtml
printf '<html><body><p>chapter b</p></body></html>' > ep/OEBPS/b.xhtml
(cd ep && zip -q -X -0 "$out/epub/book.epub" mimetype && zip -q -X -r "$out/epub/book.epub" META-INF OEBPS)

# auto: one of everything, dispatched by content
cp "$out/text/ascii.txt" "$out/pdf/two-pages.pdf" "$out/archive/s.zip" "$out/archive/nested.zip" \
   "$out/html/page.html" "$out/xml/plain.xml" "$out/docx/doc.docx" "$out/epub/book.epub" "$out/auto/"

# gitignore
printf '*.log\n!keep.log\nbuild/\n/root.txt\ndocs/**/tmp\n# comment\n\\#hash\n\\!bang\ntrailing\\ \n' > "$out/gitignore/rules"
printf '**/a/**\n[a-c]*.[!o]\n?\n***\n[\n\\\n' > "$out/gitignore/odd-globs"
echo "seeds written to $out"
