CREATE TABLE jobs (
    id int NOT NULL AUTO_INCREMENT,
    name varchar(55) COLLATE utf8_unicode_ci NOT NULL,
    payload text COLLATE utf8_unicode_ci NOT NULL,
    status varchar(55) COLLATE utf8_unicode_ci NOT NULL,
    scheduled_at datetime NOT NULL DEFAULT CURRENT_TIMESTAMP,
    created_at datetime NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (id),
    KEY status (status,scheduled_at)
) ENGINE=InnoDB
