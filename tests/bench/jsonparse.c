/*
 * jsonparse - baseline (c) of make bench: the single-process limit.  One
 * process reads an NDJSON file and parses every line with jansson, adding
 * the integer field "n" of each object (the work the sum pool does), and
 * prints {"items": N, "sum": S}.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

int
main(int argc, char **argv)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	long long items = 0, bad = 0;
	json_int_t sum = 0;
	FILE *f;

	if (argc != 2) {
		fprintf(stderr, "usage: jsonparse FILE\n");
		return 2;
	}
	if ((f = fopen(argv[1], "re")) == NULL) {
		perror(argv[1]);
		return 1;
	}
	while ((len = getline(&line, &cap, f)) > 0) {
		json_error_t err;
		json_t *v;

		if (line[len - 1] == '\n')
			len--;
		v = json_loadb(line, (size_t)len, JSON_DECODE_ANY, &err);
		items++;
		if (v == NULL || !json_is_integer(json_object_get(v, "n")))
			bad++;
		else
			sum += json_integer_value(json_object_get(v, "n"));
		json_decref(v);
	}
	free(line);
	fclose(f);
	printf("{\"items\":%lld,\"bad\":%lld,\"sum\":%lld}\n", items, bad,
	    (long long)sum);
	return bad != 0;
}
