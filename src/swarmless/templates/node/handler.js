#!/usr/bin/env node
// NAME: a CGI function in Node.js (standard library only). The request arrives as CGI/1.1
// variables (REQUEST_METHOD, QUERY_STRING, CONTENT_TYPE, CONTENT_LENGTH, HTTP_*) with the
// body on stdin; the response is headers, a blank line, then the body, on stdout.
"use strict";

const chunks = [];
process.stdin.on("data", (chunk) => chunks.push(chunk));
process.stdin.on("end", () => {
  const env = process.env;
  const body = Buffer.concat(chunks);
  const name = new URLSearchParams(env.QUERY_STRING || "").get("name") || "world";
  let text = `Hello, ${name}! (${env.REQUEST_METHOD || "GET"} from Node.js ${process.version})\n`;
  if (body.length > 0) {
    text += `You sent ${body.length} bytes: ${body.toString("utf8")}\n`;
  }
  process.stdout.write("Status: 200 OK\r\n");
  process.stdout.write("Content-Type: text/plain; charset=utf-8\r\n\r\n");
  process.stdout.write(text);
});
